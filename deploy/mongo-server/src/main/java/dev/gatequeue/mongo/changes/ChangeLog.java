package dev.gatequeue.mongo.changes;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.function.Supplier;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;
import dev.gatequeue.mongo.backend.Backend;

import static dev.gatequeue.mongo.Mongod.INTERNAL_DATABASES;
import static dev.gatequeue.mongo.wire.Replies.ok;

/**
 * The oplog. The library's own oplog runs no hook for findAndModify, writes insert events for
 * documents a unique index rejected, records no updateDescription, scans the whole oplog
 * collection for every getMore, and has no way to wake a waiting getMore. This one is fed by
 * our collection subclasses (each real insert, update and delete, whatever command caused it),
 * keeps entries in a skip list keyed by cluster time, wakes waiters on append, and is capped.
 */
public final class ChangeLog implements Oplog {
    private static final Logger log = LoggerFactory.getLogger("gatequeue.mongo");
    private static final String IMAGES_ID = "gatequeue.changeStreamPreAndPostImages";
    /** Namespaces with changeStreamPreAndPostImages enabled (collMod / create). */
    private final Set<String> imagesEnabled = ConcurrentHashMap.newKeySet();
    private static final String META_ID = "gatequeue.meta";

    private final int maxEntries;
    private final ConcurrentSkipListMap<Long, Entry> entries = new ConcurrentSkipListMap<>();
    private final Object lock = new Object();
    private final List<Runnable> waiters = new ArrayList<>();
    private volatile long last;
    private volatile long trimmedUpTo;
    /** What the write in progress on this thread is: the hooks cannot tell an update from a replacement. */
    private final ThreadLocal<WriteKind> writing = ThreadLocal.withInitial(() -> WriteKind.UPDATE);
    private Backend backend;
    private MongoCollection<?> store; // the H2 backend persists the log in local.oplog.rs

    public ChangeLog(int maxEntries) {
        this.maxEntries = maxEntries;
        this.last = Instant.now().getEpochSecond() << 32;
    }

    /** The backend is built with this log as its oplog, so the log learns of it afterwards. */
    public void attach(Backend backend, boolean persistent) {
        this.backend = backend;
        if (!persistent) {
            return;
        }
        MongoDatabase local = backend.database("local");
        MongoCollection<?> collection = local.resolveCollection("oplog.rs", false);
        if (collection == null) {
            collection = local.createCollectionOrThrowIfExists("oplog.rs");
        }
        long max = last;
        for (Document d : collection.queryAll()) {
            if (META_ID.equals(d.get("_id"))) {
                trimmedUpTo = ((Number) d.get("trimmedUpTo")).longValue();
                continue;
            }
            if (IMAGES_ID.equals(d.get("_id"))) {
                for (Object ns : (List<?>) d.get("namespaces")) {
                    imagesEnabled.add((String) ns);
                }
                continue;
            }
            try {
                Entry e = Entry.fromDocument(d);
                entries.put(e.ts, e);
                max = Math.max(max, e.ts);
            } catch (RuntimeException e) {
                log.warn("skipping unreadable oplog entry {}", d.get("_id"));
            }
        }
        last = Math.max(max, trimmedUpTo);
        store = collection;
        log.info("loaded {} change events from {}", entries.size(), collection.getFullName());
    }

    public long clusterTime() {
        return last;
    }

    long trimmedUpTo() {
        return trimmedUpTo;
    }

    public void stampClusterTime(Document response) {
        BsonTimestamp now = new BsonTimestamp(last);
        response.put("operationTime", now);
        response.put("$clusterTime", new Document("clusterTime", now)
            .append("signature", new Document("hash", new BinData(new byte[20]))
                .append("keyId", 0L)));
    }

    // --- hooks (called under the collection's lock)

    static boolean tracked(MongoCollection<?> collection) {
        return !INTERNAL_DATABASES.contains(collection.getDatabaseName())
            && !collection.getCollectionName().startsWith("system.");
    }

    public void onInsert(MongoCollection<?> collection, Document document) {
        if (tracked(collection)) {
            append(new Entry(0, "insert", collection.getDatabaseName(), collection.getCollectionName(),
                document.get("_id"), document.cloneDeeply(), null, null));
        }
    }

    public void onUpdate(MongoCollection<?> collection, Document before, Document after) {
        if (!tracked(collection)) {
            return;
        }
        boolean images = images(collection.getDatabaseName(), collection.getCollectionName());
        Entry entry;
        WriteKind kind = writing.get();
        if (kind == WriteKind.REPLACEMENT) {
            entry = new Entry(0, "replace", collection.getDatabaseName(), collection.getCollectionName(),
                after.get("_id"), after.cloneDeeply(), null, null);
        } else {
            Document updated = new Document();
            List<String> removed = new ArrayList<>();
            List<Document> truncated = new ArrayList<>();
            UpdateDescriptions.diff("", before, after, updated, removed, truncated, kind == WriteKind.PIPELINE_UPDATE);
            Document description = new Document("updatedFields", updated.cloneDeeply())
                .append("removedFields", removed)
                .append("truncatedArrays", truncated);
            entry = new Entry(0, "update", collection.getDatabaseName(), collection.getCollectionName(),
                after.get("_id"), null, description, null);
            if (images) {
                entry.post = after.cloneDeeply();
            }
        }
        if (images) {
            entry.pre = before.cloneDeeply();
        }
        append(entry);
    }

    public void onDelete(MongoCollection<?> collection, Document document) {
        if (tracked(collection)) {
            Entry entry = new Entry(0, "delete", collection.getDatabaseName(), collection.getCollectionName(),
                document.get("_id"), null, null, null);
            if (images(collection.getDatabaseName(), collection.getCollectionName())) {
                entry.pre = document.cloneDeeply();
            }
            append(entry);
        }
    }

    public void recordDropDatabase(String db) {
        if (!INTERNAL_DATABASES.contains(db)) {
            append("dropDatabase", db, null, null, null, null);
            imagesEnabled.removeIf(ns -> ns.startsWith(db + "."));
        }
    }

    /** renameCollection: a rename event on the old name (which ends a stream on it). */
    public void recordRename(String from, String to) {
        int dot = from.indexOf('.');
        int toDot = to.indexOf('.');
        if (dot < 0 || toDot < 0 || INTERNAL_DATABASES.contains(from.substring(0, dot))) {
            return;
        }
        Entry entry = new Entry(0, "rename", from.substring(0, dot), from.substring(dot + 1), null, null, null,
            null);
        entry.to = new Document("db", to.substring(0, toDot)).append("coll", to.substring(toDot + 1));
        append(entry);
        if (imagesEnabled.remove(from)) {
            imagesEnabled.add(to);
        }
    }

    private void append(String op, String db, String coll, Object id, Document document,
                        Document updateDescription) {
        append(new Entry(0, op, db, coll, id, document, updateDescription, null));
    }

    /** Stamps the entry with the next cluster time and the wall clock, stores it, wakes waiters. */
    private void append(Entry draft) {
        List<Runnable> wake;
        synchronized (lock) {
            long now = (Instant.now().getEpochSecond() << 32) | 1; // increments start at 1
            long ts = Math.max(last + 1, now);
            Entry entry = new Entry(ts, draft.op, draft.db, draft.coll, draft.id, draft.document,
                draft.updateDescription, Instant.ofEpochMilli(System.currentTimeMillis()));
            entry.pre = draft.pre;
            entry.post = draft.post;
            entry.to = draft.to;
            entries.put(ts, entry);
            if (store != null) {
                store.addDocument(entry.toDocument());
            }
            last = ts; // after the put: a reader that sees `last` sees the entry
            trimIfNeeded();
            if (waiters.isEmpty()) {
                return;
            }
            wake = new ArrayList<>(waiters);
            waiters.clear();
        }
        for (Runnable waiter : wake) {
            waiter.run();
        }
    }

    private void trimIfNeeded() {
        if (entries.size() > maxEntries + maxEntries / 10) {
            trimTo(maxEntries);
        }
    }

    /**
     * Drops all but the newest {@code keep} entries, as mongod's oplog truncation does: a
     * resume point older than the newest dropped entry is gone (ChangeStreamHistoryLost).
     * Called under {@code lock}. Returns how many entries went.
     */
    private int trimTo(int keep) {
        long upTo = trimmedUpTo;
        int removed = 0;
        while (entries.size() > keep) {
            Map.Entry<Long, Entry> first = entries.pollFirstEntry();
            upTo = first.getKey();
            removed++;
        }
        if (removed == 0) {
            return 0;
        }
        trimmedUpTo = upTo;
        if (store != null) {
            store.deleteDocuments(new Document("_id", new Document("$lte", upTo)), 0);
            store.deleteDocuments(new Document("_id", META_ID), 1);
            store.addDocument(new Document("_id", META_ID).append("trimmedUpTo", upTo));
        }
        return removed;
    }

    /**
     * {@code {gatequeueTrimChangeLog: 1, keep: N}} on admin: our own command (mongod has none;
     * its oplog rolls over by size) to make "the resume point fell off the oplog" happen on
     * demand in tests. Keeps the newest N entries (default 0).
     */
    public Document trimCommand(String db, Document body) {
        if (!db.equals("admin")) {
            throw new MongoServerError(13, "Unauthorized",
                "gatequeueTrimChangeLog may only be run against the admin database.");
        }
        Object keepValue = body.getOrDefault("keep", 0);
        if (!(keepValue instanceof Number) || ((Number) keepValue).longValue() < 0) {
            throw new MongoServerError(2, "BadValue", "'keep' must be a non-negative number");
        }
        int keep = (int) Math.min(((Number) keepValue).longValue(), Integer.MAX_VALUE);
        int removed;
        synchronized (lock) {
            removed = trimTo(keep);
        }
        log.info("change log trimmed on request: {} entries removed, {} kept", removed, entries.size());
        return ok(new Document("removed", removed).append("kept", entries.size())
            .append("trimmedUpTo", new BsonTimestamp(trimmedUpTo)));
    }

    /**
     * Runs {@code write} (a command's write through the library) with the updates it makes
     * reported as {@code kind}; afterwards this thread's writes are plain updates again.
     */
    public <T> T writing(WriteKind kind, Supplier<T> write) {
        writing.set(kind);
        try {
            return write.get();
        } finally {
            writing.set(WriteKind.UPDATE);
        }
    }

    /** A cluster time of its own, as mongod reserves one for a $currentDate timestamp. */
    public long reserveTick() {
        synchronized (lock) {
            long now = (Instant.now().getEpochSecond() << 32) | 1;
            last = Math.max(last + 1, now);
            return last;
        }
    }

    /** False when the log moved past {@code seen} already: the caller should look again. */
    public boolean awaitAfter(long seen, Runnable waiter) {
        synchronized (lock) {
            if (last != seen) {
                return false;
            }
            waiters.add(waiter);
            return true;
        }
    }

    public void removeWaiter(Runnable waiter) {
        synchronized (lock) {
            waiters.remove(waiter);
        }
    }

    Collection<Entry> after(long position, long high) {
        if (position >= high) {
            return List.of();
        }
        return entries.subMap(position, false, high, true).values();
    }

    // --- the Oplog interface: data changes arrive through the collection hooks instead

    @Override
    public void handleInsert(String namespace, List<Document> documents) {
    }

    @Override
    public void handleUpdate(String namespace, Document selector, Document query, List<Object> modifiedIds) {
    }

    @Override
    public void handleDelete(String namespace, Document query, List<Object> deletedIds) {
    }

    @Override
    public void handleDropCollection(String namespace) {
        int dot = namespace.indexOf('.');
        String db = namespace.substring(0, dot);
        String coll = namespace.substring(dot + 1);
        if (!INTERNAL_DATABASES.contains(db) && !coll.startsWith("system.")) {
            append("drop", db, coll, null, null, null);
            setImages(db, coll, false);
        }
    }

    /** changeStreamPreAndPostImages: {enabled: bool}, as mongod parses it. */
    public static boolean imagesOption(Object option) {
        if (option == null) {
            return false;
        }
        if (!(option instanceof Document) || !(((Document) option).get("enabled") instanceof Boolean)
            || ((Document) option).size() != 1) {
            throw new MongoServerError(40414, "IDLFailedToParse",
                "changeStreamPreAndPostImages must be {enabled: <bool>}, not " + option);
        }
        return (Boolean) ((Document) option).get("enabled");
    }

    /**
     * collMod, which the library lacks: only changeStreamPreAndPostImages, the one option
     * whose effect we have; any other option is refused rather than ignored.
     */
    public Document collMod(String db, Document body) {
        String coll = String.valueOf(body.get("collMod"));
        if (backend.database(db).resolveCollection(coll, false) == null) {
            throw new MongoServerError(26, "NamespaceNotFound", "ns does not exist: " + db + "." + coll);
        }
        Boolean enabled = null;
        for (String key : body.keySet()) {
            switch (key) {
                case "collMod":
                case "comment":
                case "writeConcern":
                case "$db":
                    break;
                case "changeStreamPreAndPostImages":
                    enabled = imagesOption(body.get(key));
                    break;
                default:
                    throw new MongoServerError(72, "InvalidOptions", "collMod option '" + key
                        + "' is not supported by the gatequeue embedded server");
            }
        }
        if (enabled != null) {
            setImages(db, coll, enabled);
        }
        return ok(new Document());
    }

    boolean images(String db, String coll) {
        return imagesEnabled.contains(db + "." + coll);
    }

    /** changeStreamPreAndPostImages of a collection; kept with the change log on disk. */
    public void setImages(String db, String coll, boolean enabled) {
        boolean changed = enabled ? imagesEnabled.add(db + "." + coll) : imagesEnabled.remove(db + "." + coll);
        if (changed && store != null) {
            synchronized (lock) {
                store.deleteDocuments(new Document("_id", IMAGES_ID), 1);
                store.addDocument(new Document("_id", IMAGES_ID).append("namespaces", new ArrayList<>(imagesEnabled)));
            }
        }
    }

    @Override
    public Cursor createCursor(Document changeStreamDocument, String namespace, Aggregation aggregation) {
        throw new MongoServerError(20, "IllegalOperation", "change streams are opened by the launcher");
    }

    Document lookup(String db, String coll, Object id) {
        if (!backend.hasDatabase(db)) {
            return null;
        }
        MongoCollection<?> collection = backend.database(db).resolveCollection(coll, false);
        if (collection == null) {
            return null;
        }
        for (Document d : collection.handleQuery(new Document("_id", id), 0, 1)) {
            return d.cloneDeeply();
        }
        return null;
    }
}
