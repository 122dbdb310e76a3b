package dev.gatequeue.mongo.wire;

import de.bwaldvogel.mongo.wire.MongoWireProtocolHandler;
import de.bwaldvogel.mongo.wire.message.ClientRequest;
import de.bwaldvogel.mongo.wire.message.MongoMessage;

import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;

/**
 * The library's decoder rejects any OP_MSG flag but checksumPresent; PyMongo sets moreToCome
 * for unacknowledged writes (w=0) and exhaustAllowed for exhaust cursors. We clear both (we
 * never stream replies) and remember moreToCome so that no reply is written.
 */
final class Decoder extends MongoWireProtocolHandler {
    private static final int OP_MSG = 2013;
    private static final int MORE_TO_COME = 1 << 1;
    private static final int EXHAUST_ALLOWED = 1 << 16;

    @Override
    protected ClientRequest decode(ChannelHandlerContext ctx, ByteBuf in) throws Exception {
        boolean noReply = false;
        int start = in.readerIndex();
        if (in.readableBytes() >= 20) {
            int length = in.getIntLE(start);
            if (in.readableBytes() >= length && in.getIntLE(start + 12) == OP_MSG) {
                int flags = in.getIntLE(start + 16);
                int cleared = flags & ~(MORE_TO_COME | EXHAUST_ALLOWED);
                if (cleared != flags) {
                    in.setIntLE(start + 16, cleared);
                    noReply = (flags & MORE_TO_COME) != 0;
                }
            }
        }
        ClientRequest request = super.decode(ctx, in);
        if (noReply && request instanceof MongoMessage) {
            return new NoReplyMessage((MongoMessage) request);
        }
        return request;
    }
}
