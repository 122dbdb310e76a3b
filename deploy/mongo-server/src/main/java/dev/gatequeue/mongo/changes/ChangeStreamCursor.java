package dev.gatequeue.mongo.changes;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.query.Batches;

import static dev.gatequeue.mongo.Mongod.INTERNAL_DATABASES;
import static dev.gatequeue.mongo.wire.Replies.ok;

/** A change stream: a position in the change log plus a scope and the user's stages. */
public final class ChangeStreamCursor extends AbstractCursor {
    public static final class Batch {
        public final List<Document> events;
        public final boolean closed;
        public final Document postBatchResumeToken;

        Batch(List<Document> events, boolean closed, Document postBatchResumeToken) {
            this.events = events;
            this.closed = closed;
            this.postBatchResumeToken = postBatchResumeToken;
        }
    }

    final ChangeLog log;
    final String db; // null: the whole cluster
    final String coll; // null: the whole database
    final String fullDocument; // default, updateLookup, whenAvailable, required
    final String beforeChange; // off, whenAvailable, required
    final Aggregation aggregation;
    long position; // the cluster time of the last event consumed
    boolean closed;
    public volatile boolean waiting;
    volatile long lastUsed = System.currentTimeMillis();

    ChangeStreamCursor(long id, ChangeLog log, String db, String coll, String fullDocument,
                       String beforeChange, Aggregation aggregation, long position) {
        super(id);
        this.log = log;
        this.db = db;
        this.coll = coll;
        this.fullDocument = fullDocument;
        this.beforeChange = beforeChange;
        this.aggregation = aggregation;
        this.position = position;
    }

    public void touch() {
        lastUsed = System.currentTimeMillis();
    }

    String namespace() {
        if (db == null) {
            return "admin.$cmd.aggregate";
        }
        return coll == null ? db + ".$cmd.aggregate" : db + "." + coll;
    }

    @Override
    public boolean isEmpty() {
        return closed;
    }

    @Override
    public List<Document> takeDocuments(int numberToReturn) {
        return take(numberToReturn).events;
    }

    public synchronized Batch take(int batchSize) {
        touch();
        if (closed) {
            return new Batch(List.of(), true, Tokens.of(position));
        }
        if (position < log.trimmedUpTo()) {
            closed = true;
            throw ChangeStreams.historyLost();
        }
        long high = log.clusterTime();
        int limit = batchSize > 0 ? batchSize : Integer.MAX_VALUE;
        List<Document> out = new ArrayList<>();
        long bytes = 0;
        for (Entry e : log.after(position, high)) {
            Document event = toEvent(e);
            if (event != null) {
                List<Document> docs = applyStages(event);
                long size = 0;
                for (Document d : docs) {
                    if (!event.get("_id").equals(d.get("_id"))) {
                        // mongod's check: without its token an event cannot be resumed from
                        closed = true;
                        throw new MongoServerError(280, "ChangeStreamFatalError", "Encountered an event"
                            + " whose _id field, which contains the resume token, was modified by the"
                            + " pipeline. Modifying the _id field of an event makes it impossible to"
                            + " resume the stream from that point. Only transformations that retain the"
                            + " unmodified _id field are allowed.");
                    }
                    size += Batches.size(d);
                }
                if (!out.isEmpty() && bytes + size > Batches.MAX_BYTES) {
                    return new Batch(out, false, Tokens.of(position)); // this event opens the next batch
                }
                out.addAll(docs);
                bytes += size;
            }
            position = e.ts;
            if (invalidates(e)) {
                Document invalidate = new Document("_id", Tokens.invalidate(e.ts))
                    .append("operationType", "invalidate")
                    .append("clusterTime", new BsonTimestamp(e.ts))
                    .append("wallTime", e.wall);
                out.add(invalidate);
                closed = true;
                return new Batch(out, true, Tokens.invalidate(e.ts));
            }
            if (out.size() >= limit) {
                return new Batch(out, false, Tokens.of(position));
            }
        }
        position = Math.max(position, high);
        return new Batch(out, false, Tokens.of(position));
    }

    private boolean inScope(Entry e) {
        if (db == null) {
            return !INTERNAL_DATABASES.contains(e.db);
        }
        if (!db.equals(e.db)) {
            return false;
        }
        if (coll == null) {
            return true;
        }
        return coll.equals(e.coll);
    }

    private boolean invalidates(Entry e) {
        if (db == null || !db.equals(e.db)) {
            return false;
        }
        if (coll != null) {
            return (e.op.equals("drop") || e.op.equals("rename")) && coll.equals(e.coll);
        }
        return e.op.equals("dropDatabase");
    }

    private Document toEvent(Entry e) {
        if (!inScope(e)) {
            return null;
        }
        if (coll != null && e.op.equals("dropDatabase")) {
            return null; // the collection's own drop event came before
        }
        Document ns = new Document("db", e.db);
        if (e.coll != null) {
            ns.put("coll", e.coll);
        }
        Document event = new Document("_id", Tokens.of(e.ts))
            .append("operationType", e.op)
            .append("clusterTime", new BsonTimestamp(e.ts))
            .append("wallTime", e.wall);
        switch (e.op) {
            case "insert":
            case "replace":
                event.put("fullDocument", e.document.cloneDeeply());
                break;
            case "update":
                switch (fullDocument) {
                    case "updateLookup":
                        event.put("fullDocument", log.lookup(e.db, e.coll, e.id));
                        break;
                    case "whenAvailable":
                        event.put("fullDocument", e.post != null ? e.post.cloneDeeply() : null);
                        break;
                    case "required":
                        if (e.post == null) {
                            throw imageNotFound("post", e);
                        }
                        event.put("fullDocument", e.post.cloneDeeply());
                        break;
                    default:
                        break;
                }
                break;
            default:
                break;
        }
        event.put("ns", ns);
        if (e.to != null) {
            event.put("to", e.to.cloneDeeply());
        }
        if (e.id != null) {
            event.put("documentKey", new Document("_id", e.id));
        }
        if (e.updateDescription != null) {
            event.put("updateDescription", e.updateDescription.cloneDeeply());
        }
        boolean hasPreImage = e.op.equals("update") || e.op.equals("replace") || e.op.equals("delete");
        if (hasPreImage && !beforeChange.equals("off")) {
            if (e.pre == null && beforeChange.equals("required")) {
                throw imageNotFound("pre", e);
            }
            event.put("fullDocumentBeforeChange", e.pre != null ? e.pre.cloneDeeply() : null);
        }
        return event;
    }

    private MongoServerError imageNotFound(String which, Entry e) {
        closed = true;
        return new MongoServerError(47, "NoMatchingDocument", "Change stream was configured to require a "
            + which + "-image for all update, delete and replace events, but the " + which
            + "-image was not found for event: " + Tokens.of(e.ts).toString()
            + " (changeStreamPreAndPostImages is off for " + e.db + "." + e.coll + ")");
    }

    private List<Document> applyStages(Document event) {
        if (aggregation == null) {
            return List.of(event);
        }
        return aggregation.runStages(Stream.of(event));
    }

    public Document response(String batchKey, Batch batch) {
        Document cursor = new Document()
            .append(batchKey, batch.events)
            .append("postBatchResumeToken", batch.postBatchResumeToken)
            .append("id", batch.closed ? 0L : getId())
            .append("ns", namespace());
        return ok(new Document("cursor", cursor));
    }
}
