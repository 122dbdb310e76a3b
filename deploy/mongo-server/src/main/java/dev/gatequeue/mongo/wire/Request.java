package dev.gatequeue.mongo.wire;

import java.util.List;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.message.ClientRequest;

import io.netty.channel.ChannelHandlerContext;
import io.netty.util.AttributeKey;

/**
 * A command in flight: where to answer it (a deferred getMore answers later) and what the
 * reply needs to know about it (error labels depend on the command and its session fields).
 */
public final class Request {
    public static final AttributeKey<Integer> CONNECTION_ID = AttributeKey.valueOf("gatequeue.connectionId");
    /** The client's appName from its handshake; failCommand's {@code appName} matches on it. */
    public static final AttributeKey<String> APP_NAME = AttributeKey.valueOf("gatequeue.appName");

    public final ChannelHandlerContext ctx;
    final ClientRequest message;
    public String db;
    public String command; // as the client spelled it
    public String name; // lower case
    public Document body;
    public boolean changeStream; // an aggregate with $changeStream, or a getMore on one
    public List<?> labelsOverride; // failCommand's errorLabels replace the server's own
    public boolean closeAfterRun; // onPrimaryTransactionalWrite: applied, then the reply is lost

    Request(ChannelHandlerContext ctx, ClientRequest message) {
        this.ctx = ctx;
        this.message = message;
    }

    public String appName() {
        return ctx.channel().attr(APP_NAME).get();
    }

    /** The namespace the command works on, as failCommand's {@code namespace} names it. */
    public String namespace() {
        if (name.equals("getmore")) {
            return db + "." + body.get("collection");
        }
        Object target = body.get(command);
        return target instanceof String ? db + "." + target : db + ".$cmd";
    }
}
