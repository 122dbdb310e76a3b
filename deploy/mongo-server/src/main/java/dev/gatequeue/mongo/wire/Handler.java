package dev.gatequeue.mongo.wire;

import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.backend.QueryResult;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.bson.Document;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.exception.MongoServerError;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.exception.MongoServerException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.wire.message.ClientRequest;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.wire.message.MessageHeader;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.wire.message.MongoMessage;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.wire.message.MongoQuery;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.wire.message.MongoReply;

import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.SimpleChannelInboundHandler;

import dev.gatequeue.mongo.commands.Commands;
import dev.gatequeue.mongo.commands.ErrorLabels;

import static dev.gatequeue.mongo.wire.Replies.errorResponse;
import static dev.gatequeue.mongo.wire.Replies.isTrue;

/** Our replacement for the library's MongoDatabaseHandler. */
public final class Handler extends SimpleChannelInboundHandler<ClientRequest> {
    private static final Logger log = LoggerFactory.getLogger("gatequeue.mongo");
    private final Server server;
    private final AtomicInteger replyIds = new AtomicInteger();

    Handler(Server server) {
        this.server = server;
    }

    @Override
    public void channelActive(ChannelHandlerContext ctx) throws Exception {
        ctx.channel().attr(Request.CONNECTION_ID).set(server.connectionIds.incrementAndGet());
        super.channelActive(ctx);
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) throws Exception {
        server.backend.handleClose(ctx.channel());
        super.channelInactive(ctx);
    }

    @Override
    protected void channelRead0(ChannelHandlerContext ctx, ClientRequest message) {
        Request request = new Request(ctx, message);
        if (message instanceof MongoQuery) {
            MongoQuery query = (MongoQuery) message;
            if (!query.getCollectionName().startsWith("$cmd")) {
                // OP_QUERY on a collection: gone from MongoDB 6.0 and never sent by PyMongo 4
                QueryResult result = server.backend.handleQuery(query);
                ctx.channel().writeAndFlush(new MongoReply(header(message),
                    result != null ? result.collectDocuments() : List.of(),
                    result != null ? result.getCursorId() : 0));
                return;
            }
            Document body = query.getQuery();
            String command = body.keySet().iterator().next();
            if ("$query".equals(command)) {
                body = (Document) body.get("$query");
                command = body.keySet().iterator().next();
            }
            dispatch(request, query.getDatabaseName(), command, body);
        } else if (message instanceof MongoMessage) {
            MongoMessage msg = (MongoMessage) message;
            Document body = msg.getDocument();
            dispatch(request, msg.getDatabaseName(), body.keySet().iterator().next(), body);
        } else {
            throw new MongoServerException("unknown message: " + message);
        }
    }

    private MessageHeader header(ClientRequest request) {
        return new MessageHeader(replyIds.incrementAndGet(), request.getHeader().getRequestID());
    }

    /** Every answer goes out here: error labels, cluster time, or no reply at all. */
    public void reply(Request request, Document response) {
        if (request.closeAfterRun) {
            request.ctx.channel().close();
            return;
        }
        if (request.name != null) {
            ErrorLabels.apply(request, response);
        }
        server.changes.stampClusterTime(response);
        if (request.message instanceof NoReplyMessage) {
            return;
        }
        Channel channel = request.ctx.channel();
        if (!channel.isActive()) {
            return;
        }
        if (request.message instanceof MongoQuery) {
            channel.writeAndFlush(new MongoReply(header(request.message), List.of(response), 0));
        } else {
            channel.writeAndFlush(new MongoMessage(channel, header(request.message), response));
        }
    }

    /**
     * failCommand acts before the command runs, as on mongod: it may block the connection for
     * a while (on a timer of the event loop, holding no thread), close it, or answer an error.
     */
    private void dispatch(Request request, String db, String command, Document body) {
        request.db = db;
        request.command = command;
        request.name = command.toLowerCase(Locale.ROOT);
        request.body = body;
        Document fail = server.failPoints.beforeCommand(request);
        if (fail == null) {
            run(request);
            return;
        }
        if (isTrue(fail.get("blockConnection"))) {
            long ms = ((Number) fail.getOrDefault("blockTimeMS", 0)).longValue();
            request.ctx.executor().schedule(() -> afterBlock(request, fail), ms, TimeUnit.MILLISECONDS);
            return;
        }
        afterBlock(request, fail);
    }

    private void afterBlock(Request request, Document fail) {
        if (isTrue(fail.get("closeConnection"))) {
            request.ctx.channel().close();
            return;
        }
        if (fail.get("errorCode") instanceof Number) {
            int code = ((Number) fail.get("errorCode")).intValue();
            if (fail.get("errorLabels") instanceof List) {
                request.labelsOverride = (List<?>) fail.get("errorLabels");
            }
            reply(request, errorResponse(new MongoServerError(code, ErrorLabels.codeName(code),
                "Failing command via 'failCommand' failpoint")));
            return;
        }
        run(request); // blockConnection alone: the command runs after the wait
    }

    private void run(Request request) {
        Document response;
        try {
            response = Commands.run(server, this, request);
            if (response != null) {
                server.failPoints.writeConcernError(request, response);
            }
        } catch (MongoServerException e) {
            if (e.isLogError() && !(e instanceof MongoServerError)) {
                log.warn("{} failed: {}", request.command, e.getMessageWithoutErrorCode());
            }
            response = errorResponse(e);
        } catch (RuntimeException e) {
            log.error("{} failed", request.command, e);
            response = errorResponse(new MongoServerError(1, "InternalError",
                "internal error in the embedded server: " + e));
        }
        if (response != null) { // null: a getMore that answers later
            reply(request, response);
        }
    }
}
