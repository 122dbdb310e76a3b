package dev.gatequeue.mongo.query;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import dev.gatequeue.mongo.backend.Backend;

import io.netty.channel.Channel;

import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.Mongod.CURSOR_IDLE_TIMEOUT_MS;
import static dev.gatequeue.mongo.wire.Replies.isTrue;
import static dev.gatequeue.mongo.wire.Replies.ok;

/**
 * Our cursors for find and aggregate: the library computes the whole result (it has no
 * streaming query engine), we hand it out in mongod's batches. Registered with the library's
 * cursor registry as well, so that its killCursors finds them.
 */
public final class QueryCursors {
    private final Map<Long, QueryCursor> cursors = new ConcurrentHashMap<>();
    private final Backend backend;

    public QueryCursors(Backend backend) {
        this.backend = backend;
    }

    public Document find(Server server, Channel channel, String db, String command, Document body, Variables vars) {
        int batchSize = Batches.firstBatchSize(body.remove("batchSize"), "batchSize");
        boolean singleBatch = isTrue(body.remove("singleBatch"));
        if (body.get("filter") instanceof Document) {
            body.put("filter", vars.filter((Document) body.get("filter")));
        }
        Document response = server.backend.handleCommand(channel, db, command, body);
        return firstBatch(response, batchSize, singleBatch);
    }

    public Document aggregate(Server server, Channel channel, String db, String command, Document body, Variables vars) {
        if (isTrue(body.get("explain"))) {
            return server.backend.handleCommand(channel, db, command, body);
        }
        Object cursorOptions = body.get("cursor");
        if (!(cursorOptions instanceof Document)) {
            throw new MongoServerError(9, "FailedToParse",
                "The 'cursor' option is required, except for aggregate with the explain argument");
        }
        Document options = new Document((Document) cursorOptions);
        int batchSize = Batches.firstBatchSize(options.remove("batchSize"), "batchSize");
        Object readConcern = body.get("readConcern");
        if (readConcern instanceof Document && "linearizable".equals(((Document) readConcern).get("level"))
            && writesOut(body.get("pipeline"))) {
            throw new MongoServerError(72, "InvalidOptions",
                "readConcern level 'linearizable' is not supported for $out or $merge");
        }
        body.put("cursor", options);
        body.put("pipeline", Pipelines.prepare(Aggregation.parse(body.get("pipeline")), vars));
        Document response = server.backend.handleCommand(channel, db, command, body);
        return firstBatch(response, batchSize, false);
    }

    private static boolean writesOut(Object pipeline) {
        if (!(pipeline instanceof List) || ((List<?>) pipeline).isEmpty()) {
            return false;
        }
        Object last = ((List<?>) pipeline).get(((List<?>) pipeline).size() - 1);
        return last instanceof Document && (((Document) last).containsKey("$out") || ((Document) last).containsKey("$merge"));
    }

    /** The library's one-reply result, cut to the first batch; the rest waits in a cursor. */
    private Document firstBatch(Document response, int batchSize, boolean singleBatch) {
        Document cursor = (Document) response.get("cursor");
        if (cursor == null || !(cursor.get("firstBatch") instanceof List)) {
            return response;
        }
        @SuppressWarnings("unchecked")
        List<Document> all = new ArrayList<>((List<Document>) cursor.get("firstBatch"));
        String ns = (String) cursor.get("ns");
        QueryCursor rest = new QueryCursor(backend.cursors().generateCursorId(), ns, all);
        List<Document> first = batchSize == 0 ? List.of()
            : rest.takeDocuments(batchSize < 0 ? Batches.DEFAULT_FIRST : batchSize);
        long id = 0;
        if (!singleBatch && !rest.isEmpty()) {
            cursors.put(rest.getId(), rest);
            backend.cursors().add(rest);
            id = rest.getId();
        }
        Document out = new Document("firstBatch", first).append("id", id).append("ns", ns);
        response.put("cursor", out);
        return response;
    }

    public QueryCursor get(long id) {
        return cursors.get(id);
    }

    public Document getMore(QueryCursor cursor, String db, String collection, int batchSize) {
        String ns = db + "." + collection;
        if (!ns.equals(cursor.ns)) {
            throw new MongoServerError(13, "Unauthorized", "Requested getMore on namespace '" + ns
                + "', but cursor belongs to a different namespace " + cursor.ns);
        }
        List<Document> batch = cursor.takeDocuments(batchSize);
        long id = cursor.getId();
        if (cursor.isEmpty()) {
            forget(id);
            id = 0;
        }
        return ok(new Document("cursor", new Document("nextBatch", batch).append("id", id)
            .append("ns", cursor.ns)));
    }

    public void forget(long id) {
        if (cursors.remove(id) != null) {
            backend.cursors().remove(id);
        }
    }

    public void killAll() {
        for (Long id : new ArrayList<>(cursors.keySet())) {
            forget(id);
        }
    }

    /** mongod closes cursors idle for 10 minutes (cursorTimeoutMillis). */
    public void reapIdle() {
        long now = System.currentTimeMillis();
        for (QueryCursor c : cursors.values()) {
            if (now - c.lastUsed > CURSOR_IDLE_TIMEOUT_MS) {
                forget(c.getId());
            }
        }
    }
}
