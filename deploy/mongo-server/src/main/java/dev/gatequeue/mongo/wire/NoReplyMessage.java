package dev.gatequeue.mongo.wire;

import de.bwaldvogel.mongo.wire.message.MongoMessage;

/** An OP_MSG the client sent with moreToCome: it reads no reply, so we must send none. */
final class NoReplyMessage extends MongoMessage {
    NoReplyMessage(MongoMessage m) {
        super(m.getChannel(), m.getHeader(), m.getDocument());
    }
}
