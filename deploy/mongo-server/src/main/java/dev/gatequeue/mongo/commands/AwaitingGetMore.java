package dev.gatequeue.mongo.commands;

import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.bson.Document;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.exception.MongoServerError;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.exception.MongoServerException;

import dev.gatequeue.mongo.changes.ChangeStreamCursor;
import dev.gatequeue.mongo.wire.Handler;
import dev.gatequeue.mongo.wire.Request;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.wire.Replies.errorResponse;

/**
 * A change stream getMore that waits for events without holding a thread: it registers with
 * the change log and a timer on the channel's event loop, whichever fires first answers.
 */
final class AwaitingGetMore implements Runnable {
    private static final Logger log = LoggerFactory.getLogger("gatequeue.mongo");
    final Server server;
    final Handler handler;
    final Request request;
    final ChangeStreamCursor cursor;
    final int batchSize;
    final long deadline;
    ScheduledFuture<?> timer;
    AtomicBoolean fired;

    AwaitingGetMore(Server server, Handler handler, Request request, ChangeStreamCursor cursor,
                    int batchSize, long deadline) {
        this.server = server;
        this.handler = handler;
        this.request = request;
        this.cursor = cursor;
        this.batchSize = batchSize;
        this.deadline = deadline;
    }

    /** Called by the change log (any thread) or the timer (the event loop). */
    @Override
    public void run() {
        AtomicBoolean f = fired;
        if (f != null && f.compareAndSet(false, true)) {
            request.ctx.executor().execute(this::attempt);
        }
    }

    void attempt() {
        if (timer != null) {
            timer.cancel(false);
            timer = null;
        }
        if (!request.ctx.channel().isActive()) {
            cursor.waiting = false;
            server.changes.removeWaiter(this);
            return;
        }
        Document response;
        try {
            if (server.streams.cursor(cursor.getId()) != cursor) {
                throw new MongoServerError(237, "CursorKilled",
                    "cursor id " + cursor.getId() + " was killed");
            }
            long seen = server.changes.clusterTime();
            ChangeStreamCursor.Batch batch = cursor.take(batchSize);
            if (batch.events.isEmpty() && !batch.closed && System.nanoTime() < deadline) {
                fired = new AtomicBoolean();
                cursor.waiting = true;
                if (server.changes.awaitAfter(seen, this)) {
                    long remaining = deadline - System.nanoTime();
                    timer = request.ctx.executor().schedule(this, remaining, TimeUnit.NANOSECONDS);
                    return;
                }
                fired.set(true);
                request.ctx.executor().execute(this::attempt); // something arrived meanwhile
                return;
            }
            response = cursor.response("nextBatch", batch);
            if (batch.closed) {
                server.streams.forgetChangeStream(cursor.getId());
            }
        } catch (MongoServerException e) {
            server.streams.forgetChangeStream(cursor.getId());
            response = errorResponse(e);
        } catch (RuntimeException e) {
            log.error("getMore on change stream failed", e);
            server.streams.forgetChangeStream(cursor.getId());
            response = errorResponse(new MongoServerError(1, "InternalError", e.toString()));
        }
        cursor.waiting = false;
        cursor.touch();
        server.changes.removeWaiter(this);
        handler.reply(request, response);
    }
}
