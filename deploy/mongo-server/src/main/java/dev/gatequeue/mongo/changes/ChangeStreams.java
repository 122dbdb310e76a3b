package dev.gatequeue.mongo.changes;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import dev.gatequeue.mongo.backend.Backend;

import dev.gatequeue.mongo.query.Pipelines;
import dev.gatequeue.mongo.query.Variables;

import static dev.gatequeue.mongo.Mongod.CURSOR_IDLE_TIMEOUT_MS;
import static dev.gatequeue.mongo.wire.Replies.isTrue;

/** The open change streams: opening one ($changeStream's options), finding, forgetting, reaping. */
public final class ChangeStreams {
    private static final Logger log = LoggerFactory.getLogger("gatequeue.mongo");

    private static final Set<String> STREAM_OPTIONS = Set.of("fullDocument", "fullDocumentBeforeChange",
        "resumeAfter", "startAfter", "startAtOperationTime", "allChangesForCluster", "showExpandedEvents",
        "allowToRunOnConfigDB");
    private static final Set<String> STREAM_STAGES = Set.of("$match", "$project", "$addFields", "$set",
        "$unset", "$replaceRoot", "$replaceWith", "$redact");
    /** mongod's stage names (6.0), so that an unknown one fails as there: 40324. */
    private static final Set<String> KNOWN_STAGES = Set.of("$addFields", "$bucket", "$bucketAuto",
        "$changeStream", "$collStats", "$count", "$densify", "$documents", "$facet", "$fill", "$geoNear",
        "$graphLookup", "$group", "$indexStats", "$limit", "$listSessions", "$lookup", "$match", "$merge",
        "$out", "$planCacheStats", "$project", "$redact", "$replaceRoot", "$replaceWith", "$sample",
        "$search", "$searchMeta", "$set", "$setWindowFields", "$skip", "$sort", "$sortByCount",
        "$unionWith", "$unset", "$unwind", "$currentOp", "$listLocalSessions");
    private static final Set<String> FULL_DOCUMENT = Set.of("default", "updateLookup", "whenAvailable",
        "required");
    private static final Set<String> BEFORE_CHANGE = Set.of("off", "whenAvailable", "required");

    private final ChangeLog changes;
    private final Backend backend;
    private final Map<Long, ChangeStreamCursor> cursors = new ConcurrentHashMap<>();

    public ChangeStreams(ChangeLog changes, Backend backend) {
        this.changes = changes;
        this.backend = backend;
    }

    /** An aggregate whose first stage is $changeStream: the stream's cursor and first batch. */
    public Document openStream(String db, Document body) {
        List<Document> pipeline = Aggregation.parse(body.get("pipeline"));
        Document spec = (Document) pipeline.get(0).get("$changeStream");
        for (String key : spec.keySet()) {
            if (!STREAM_OPTIONS.contains(key)) {
                throw new MongoServerError(40415, "Location40415",
                    "BSON field '$changeStream." + key + "' is an unknown field.");
            }
        }
        String fullDocument = String.valueOf(spec.getOrDefault("fullDocument", "default"));
        if (!FULL_DOCUMENT.contains(fullDocument)) {
            throw new MongoServerError(2, "BadValue", "'" + fullDocument
                + "' is not a valid value for $changeStream.fullDocument");
        }
        String before = String.valueOf(spec.getOrDefault("fullDocumentBeforeChange", "off"));
        if (!BEFORE_CHANGE.contains(before)) {
            throw new MongoServerError(2, "BadValue", "'" + before
                + "' is not a valid value for $changeStream.fullDocumentBeforeChange");
        }
        if (isTrue(spec.get("showExpandedEvents"))) {
            // create, createIndexes, modify, ... events: we record none, so refuse the option
            throw new MongoServerError(2, "BadValue",
                "showExpandedEvents is not supported by the gatequeue embedded server");
        }
        Object readConcern = body.get("readConcern");
        if (readConcern instanceof Document && ((Document) readConcern).get("level") != null
            && !"majority".equals(((Document) readConcern).get("level"))) {
            throw new MongoServerError(72, "InvalidOptions", "$changeStream requires read concern"
                + " level 'majority', not '" + ((Document) readConcern).get("level") + "'");
        }
        List<Document> stages = pipeline.subList(1, pipeline.size());
        for (Document stage : stages) {
            String name = stage.keySet().iterator().next();
            if (!KNOWN_STAGES.contains(name)) {
                throw new MongoServerError(40324, "Location40324",
                    "Unrecognized pipeline stage name: '" + name + "'");
            }
            if (!STREAM_STAGES.contains(name)) {
                throw new MongoServerError(20, "IllegalOperation",
                    name + " is not permitted in a $changeStream pipeline");
            }
        }
        if (!(body.get("cursor") instanceof Document)) {
            throw new MongoServerError(9, "FailedToParse",
                "The 'cursor' option is required, except for aggregate with the explain argument");
        }

        Object target = body.get("aggregate");
        String coll = target instanceof String ? (String) target : null;
        boolean cluster = isTrue(spec.get("allChangesForCluster"));
        if (cluster && (!db.equals("admin") || coll != null)) {
            throw new MongoServerError(2, "BadValue",
                "allChangesForCluster is only valid on 'admin' with aggregate: 1");
        }
        if (!cluster && db.equals("admin")) {
            throw new MongoServerError(73, "InvalidNamespace",
                "$changeStream on admin needs allChangesForCluster: true");
        }

        MongoDatabase database = backend.database(db);
        MongoCollection<?> collection = coll != null ? database.resolveCollection(coll, false) : null;
        Aggregation aggregation = stages.isEmpty() ? null
            : Aggregation.fromPipeline(Pipelines.prepare(stages, Variables.NONE), backend::database, database,
                collection, changes);

        long position;
        Object startAfter = spec.get("startAfter");
        Object resumeAfter = spec.get("resumeAfter");
        Object startAt = spec.get("startAtOperationTime");
        if (startAfter != null) {
            position = Tokens.parse(startAfter, true);
        } else if (resumeAfter != null) {
            position = Tokens.parse(resumeAfter, false);
        } else if (startAt instanceof BsonTimestamp) {
            position = ((BsonTimestamp) startAt).getValue() - 1;
        } else {
            position = changes.clusterTime();
        }
        if (position < changes.trimmedUpTo()) {
            throw historyLost();
        }

        ChangeStreamCursor cursor = new ChangeStreamCursor(backend.cursors().generateCursorId(), changes,
            cluster ? null : db, coll, fullDocument, before, aggregation, position);
        int batchSize = ((Number) ((Document) body.get("cursor")).getOrDefault("batchSize", 0)).intValue();
        ChangeStreamCursor.Batch batch = cursor.take(batchSize);
        if (!batch.closed) {
            backend.cursors().add(cursor);
            cursors.put(cursor.getId(), cursor);
        }
        return cursor.response("firstBatch", batch);
    }

    static MongoServerError historyLost() {
        return new MongoServerError(286, "ChangeStreamHistoryLost",
            "Resume of change stream was not possible, as the resume point may no longer be in the oplog.");
    }

    public ChangeStreamCursor cursor(long id) {
        return cursors.get(id);
    }

    public void forgetAllCursors() {
        for (Long id : new ArrayList<>(cursors.keySet())) {
            forgetChangeStream(id);
        }
    }

    public void forgetChangeStream(long id) {
        if (cursors.remove(id) != null) {
            backend.cursors().remove(id);
        }
    }

    /** mongod kills cursors idle for 10 minutes; a crashed client must not leak them forever. */
    public void reapIdleCursors() {
        long now = System.currentTimeMillis();
        for (ChangeStreamCursor c : cursors.values()) {
            if (!c.waiting && now - c.lastUsed > CURSOR_IDLE_TIMEOUT_MS) {
                log.info("closing change stream cursor {} idle for 10 minutes", c.getId());
                forgetChangeStream(c.getId());
            }
        }
    }
}
