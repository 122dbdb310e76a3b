package dev.gatequeue.mongo.commands;

import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.backend.AbstractMongoBackend;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import io.netty.channel.Channel;

import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.changes.ChangeStreamCursor;
import dev.gatequeue.mongo.query.QueryCursor;
import dev.gatequeue.mongo.query.Variables;
import dev.gatequeue.mongo.wire.Handler;
import dev.gatequeue.mongo.wire.Request;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.Mongod.DEFAULT_AWAIT_MS;
import static dev.gatequeue.mongo.wire.Replies.isOk;
import static dev.gatequeue.mongo.wire.Replies.ok;

/** Everything our dispatcher answers itself, and the fixes around what the library answers. */
public final class Commands {

    /** Keys PyMongo adds to commands that the library does not know and need not see. */
    static final List<String> ENVELOPE = List.of(
        "lsid", "txnNumber", "$clusterTime", "$readPreference", "autocommit", "startTransaction",
        "apiVersion", "apiStrict", "apiDeprecationErrors");

    static final Set<String> WRITE_COMMANDS = Set.of("insert", "update", "delete", "findandmodify");

    public static Document run(Server server, Handler handler, Request request) {
        String db = request.db;
        String command = request.command;
        String name = request.name;
        Document body = request.body;
        if (body.containsKey("startTransaction") || body.containsKey("autocommit")
            || name.equals("committransaction") || name.equals("aborttransaction")) {
            throw new MongoServerError(20, "IllegalOperation",
                "multi-document transactions are not supported by the gatequeue embedded MongoDB"
                    + " server (mongo-java-server); gatequeue must not need them");
        }
        switch (name) {
            case "hello":
            case "ismaster":
                return ServerInfo.hello(server, request, command);
            case "getmore":
                return getMore(server, handler, request, db, body);
            case "aggregate":
                if (isChangeStream(body)) {
                    request.changeStream = true;
                    return server.streams.openStream(db, body);
                }
                break;
            case "endsessions":
                server.sessions.end(body.get(command));
                return ok(new Document());
            case "killallsessions":
            case "killallsessionsbypattern":
                // mongod kills the cursors of every session, and PyMongo gives each cursor one
                server.queryCursors.killAll();
                server.streams.forgetAllCursors();
                return ok(new Document());
            case "replsetgetstatus":
                return ServerInfo.replSetGetStatus(server);
            case "replsetinitiate":
                throw new MongoServerError(23, "AlreadyInitialized", "already initialized");
            case "configurefailpoint":
                return server.failPoints.configure(db, body);
            case "getparameter":
                return ServerInfo.getParameter(db, body);
            case "buildinfo":
                return ServerInfo.buildInfo();
            case "getcmdlineopts":
                return ServerInfo.cmdLineOpts(server, db);
            case "gatequeuetrimchangelog":
                return server.changes.trimCommand(db, body);
            default:
                break;
        }

        Document clean = new Document(body);
        ENVELOPE.forEach(clean::remove);
        Object lsid = body.get("lsid");
        Object txnNumber = body.get("txnNumber");
        if (WRITE_COMMANDS.contains(name) && lsid instanceof Document && txnNumber instanceof Number) {
            Supplier<Document> write = () -> server.failPoints.transactionalWrite(request,
                () -> execute(server, request, db, command, name, clean));
            return server.sessions.retryable(((Document) lsid).get("id"),
                ((Number) txnNumber).longValue(), name, clean, write);
        }
        return execute(server, request, db, command, name, clean);
    }
    private static Document execute(Server server, Request request, String db, String command,
                                    String name, Document body) {
        Channel channel = request.ctx.channel();
        AbstractMongoBackend backend = server.backend;
        Variables vars = Variables.forCommand(server.changes, body.remove("let"));
        refuseCollation(body.get("collation"));
        switch (name) {
            case "find":
                return server.queryCursors.find(server, channel, db, command, body, vars);
            case "aggregate":
                return server.queryCursors.aggregate(server, channel, db, command, body, vars);
            case "count":
            case "distinct":
                if (body.get("query") instanceof Document) {
                    body.put("query", vars.filter((Document) body.get("query")));
                }
                return backend.handleCommand(channel, db, command, body);
            case "insert": {
                refuseDollarIds(body.get("documents"));
                // MongoDB's default is ordered; the library's is unordered.
                body.putIfAbsent("ordered", Boolean.TRUE);
                Document response = backend.handleCommand(channel, db, command, body);
                Writes.fixInsertCount(body, response);
                return response;
            }
            case "update":
                return Writes.update(server, channel, db, command, body, vars);
            case "delete":
                body.put("deletes", Writes.withFilters(body.get("deletes"), vars));
                return backend.handleCommand(channel, db, command, body);
            case "findandmodify":
                return Writes.findAndModify(server, channel, db, command, body, vars);
            case "createindexes":
                Writes.refusePartialUniqueIndexes(body);
                if (body.get("indexes") instanceof List) {
                    for (Object index : (List<?>) body.get("indexes")) {
                        if (index instanceof Document) {
                            refuseCollation(((Document) index).get("collation"));
                        }
                    }
                }
                return backend.handleCommand(channel, db, command, body);
            case "create": {
                Object images = body.remove("changeStreamPreAndPostImages");
                boolean enabled = ChangeLog.imagesOption(images);
                Document response = backend.handleCommand(channel, db, command, body);
                if (isOk(response) && enabled) {
                    server.changes.setImages(db, (String) body.get(command), true);
                }
                return response;
            }
            case "collmod":
                return server.changes.collMod(db, body);
            case "renamecollection": {
                Document response = backend.handleCommand(channel, db, command, body);
                if (isOk(response) && !Objects.equals(body.get(command), body.get("to"))) {
                    server.changes.recordRename(String.valueOf(body.get(command)), String.valueOf(body.get("to")));
                }
                return response;
            }
            case "dropdatabase": {
                Document response = backend.handleCommand(channel, db, command, body);
                server.changes.recordDropDatabase(db);
                return response;
            }
            case "killcursors": {
                Document response = backend.handleCommand(channel, db, command, body); // reports killed ids
                Object ids = body.get("cursors");
                if (ids instanceof List) {
                    for (Object id : (List<?>) ids) {
                        server.streams.forgetChangeStream(((Number) id).longValue());
                        server.queryCursors.forget(((Number) id).longValue());
                    }
                }
                return response;
            }
            default:
                return backend.handleCommand(channel, db, command, body);
        }
    }

    /**
     * The library ignores collations (it compares strings by code point), so a query with one
     * would match other documents than on mongod: refused, as transactions are. The simple
     * collation is what the library does.
     */
    static void refuseCollation(Object collation) {
        if (collation == null) {
            return;
        }
        if (collation instanceof Document && ((Document) collation).size() == 1
            && "simple".equals(((Document) collation).get("locale"))) {
            return;
        }
        throw new MongoServerError(2, "BadValue", "collations other than {locale: 'simple'} are not"
            + " supported by the gatequeue embedded MongoDB server (mongo-java-server)");
    }
    /** mongod refuses an _id holding $-prefixed fields (they are not valid for storage). */
    private static void refuseDollarIds(Object documents) {
        if (!(documents instanceof List)) {
            return;
        }
        for (Object d : (List<?>) documents) {
            Object id = d instanceof Document ? ((Document) d).get("_id") : null;
            if (id instanceof Document) {
                for (String key : ((Document) id).keySet()) {
                    if (key.startsWith("$")) {
                        throw new MongoServerError(52, "DollarPrefixedFieldName", "_id fields may not contain"
                            + " '$'-prefixed fields: " + key + " is not valid for storage.");
                    }
                }
            }
        }
    }
    static boolean isChangeStream(Document body) {
        Object pipeline = body.get("pipeline");
        if (!(pipeline instanceof List) || ((List<?>) pipeline).isEmpty()) {
            return false;
        }
        Object first = ((List<?>) pipeline).get(0);
        return first instanceof Document && ((Document) first).containsKey("$changeStream");
    }
    private static Document getMore(Server server, Handler handler, Request request, String db,
                                    Document body) {
        long cursorId = ((Number) body.get("getMore")).longValue();
        Object size = body.get("batchSize");
        if (size instanceof Number && ((Number) size).longValue() <= 0) {
            throw new MongoServerError(2, "BadValue",
                "Batch size for getMore must be positive, but received: " + size);
        }
        int batchSize = size instanceof Number ? ((Number) size).intValue() : 0;
        ChangeStreamCursor cursor = server.streams.cursor(cursorId);
        if (cursor != null) {
            request.changeStream = true;
            server.failPoints.getMoreAfterCursorCheckout(request, () -> server.streams.forgetChangeStream(cursorId));
            Object maxTime = body.get("maxTimeMS");
            long awaitMs = maxTime instanceof Number ? ((Number) maxTime).longValue() : DEFAULT_AWAIT_MS;
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, awaitMs));
            new AwaitingGetMore(server, handler, request, cursor, batchSize, deadline).attempt();
            return null;
        }
        QueryCursor query = server.queryCursors.get(cursorId);
        if (query != null) {
            server.failPoints.getMoreAfterCursorCheckout(request, () -> server.queryCursors.forget(cursorId));
            return server.queryCursors.getMore(query, db, (String) body.get("collection"), batchSize);
        }
        throw new MongoServerError(43, "CursorNotFound", "cursor id " + cursorId + " not found");
    }
}
