package dev.gatequeue.mongo.changes;

import java.time.Instant;

import de.bwaldvogel.mongo.bson.Document;

/** One change, as mongod's oplog would hold it. */
public final class Entry {
    final long ts;
    final String op; // insert, update, replace, delete, drop, rename, dropDatabase
    final String db;
    final String coll; // null for dropDatabase
    final Object id;
    final Document document; // insert/replace: the new document
    final Document updateDescription; // update
    final Instant wall;
    Document pre; // the document before an update, replace or delete (pre-images enabled)
    Document post; // the document after an update (post-images enabled)
    Document to; // rename: {db, coll} of the new name

    Entry(long ts, String op, String db, String coll, Object id, Document document,
          Document updateDescription, Instant wall) {
        this.ts = ts;
        this.op = op;
        this.db = db;
        this.coll = coll;
        this.id = id;
        this.document = document;
        this.updateDescription = updateDescription;
        this.wall = wall;
    }

    Document toDocument() {
        Document d = new Document("_id", ts)
            .append("op", op)
            .append("db", db)
            .append("coll", coll)
            .append("wall", wall);
        if (id != null) {
            d.put("key", new Document("_id", id));
        }
        d.putIfNotNull("o", document);
        d.putIfNotNull("u", updateDescription);
        d.putIfNotNull("pre", pre);
        d.putIfNotNull("post", post);
        d.putIfNotNull("to", to);
        return d;
    }

    static Entry fromDocument(Document d) {
        Object key = d.get("key");
        Entry e = new Entry(((Number) d.get("_id")).longValue(), (String) d.get("op"),
            (String) d.get("db"), (String) d.get("coll"),
            key instanceof Document ? ((Document) key).get("_id") : null,
            (Document) d.get("o"), (Document) d.get("u"), (Instant) d.get("wall"));
        e.pre = (Document) d.get("pre");
        e.post = (Document) d.get("post");
        e.to = (Document) d.get("to");
        return e;
    }
}
