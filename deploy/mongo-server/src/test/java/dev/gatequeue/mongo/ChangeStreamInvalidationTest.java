package dev.gatequeue.mongo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.bson.BsonDocument;
import org.bson.Document;
import org.junit.jupiter.api.Test;

import com.mongodb.MongoCommandException;
import com.mongodb.MongoNamespace;
import com.mongodb.client.MongoChangeStreamCursor;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.model.changestream.ChangeStreamDocument;
import com.mongodb.client.model.changestream.OperationType;

/** Dropping or renaming what a stream watches ends it with an invalidate event, as on mongod. */
class ChangeStreamInvalidationTest extends ServerTestBase {

    /**
     * The events up to and including an invalidate, or up to the first getMore that finds none:
     * the writes were answered before this runs, and the server logs an event before it answers.
     */
    private static List<ChangeStreamDocument<Document>> untilInvalidated(
            MongoChangeStreamCursor<ChangeStreamDocument<Document>> cursor) {
        List<ChangeStreamDocument<Document>> events = new ArrayList<>();
        while (true) {
            ChangeStreamDocument<Document> event = cursor.tryNext();
            if (event == null) {
                return events;
            }
            events.add(event);
            if (event.getOperationType() == OperationType.INVALIDATE) {
                return events;
            }
        }
    }

    private static List<OperationType> types(List<ChangeStreamDocument<Document>> events) {
        List<OperationType> types = new ArrayList<>();
        for (ChangeStreamDocument<Document> e : events) {
            types.add(e.getOperationType());
        }
        return types;
    }

    @Test
    void dropInvalidatesAStreamOnTheCollection() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 0));
        try (var cursor = jobs.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
            jobs.insertOne(new Document("_id", 1));
            collection("other").drop(); // another collection: no effect on this stream
            jobs.drop();
            List<ChangeStreamDocument<Document>> events = untilInvalidated(cursor);
            assertEquals(List.of(OperationType.INSERT, OperationType.DROP, OperationType.INVALIDATE),
                types(events));
            assertEquals(new MongoNamespace(db.getName(), "jobs"), events.get(1).getNamespace());
        }
    }

    @Test
    void renameInvalidatesAndNamesTheTarget() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 0));
        try (var cursor = jobs.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
            jobs.renameCollection(new MongoNamespace(db.getName(), "jobs_old"));
            List<ChangeStreamDocument<Document>> events = untilInvalidated(cursor);
            assertEquals(List.of(OperationType.RENAME, OperationType.INVALIDATE), types(events));
            assertEquals(new MongoNamespace(db.getName(), "jobs_old"), events.get(0).getDestinationNamespace());
        }
    }

    @Test
    void dropDatabaseInvalidatesADatabaseStream() {
        collection("a").insertOne(new Document("_id", 1));
        try (var cursor = db.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
            collection("a").insertOne(new Document("_id", 2));
            db.drop();
            List<OperationType> seen = types(untilInvalidated(cursor));
            assertEquals(OperationType.INSERT, seen.get(0));
            assertEquals(List.of(OperationType.DROP_DATABASE, OperationType.INVALIDATE),
                seen.subList(seen.size() - 2, seen.size()));
        }
    }

    @Test
    void anInvalidateTokenStartsAfterButDoesNotResume() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 0));
        BsonDocument invalidate;
        try (var cursor = jobs.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
            jobs.drop();
            List<ChangeStreamDocument<Document>> events = untilInvalidated(cursor);
            invalidate = events.get(events.size() - 1).getResumeToken();
            assertEquals(OperationType.INVALIDATE, events.get(events.size() - 1).getOperationType());
        }
        MongoCommandException e = assertThrows(MongoCommandException.class,
            () -> jobs.watch().resumeAfter(invalidate).cursor().close());
        assertEquals(260, e.getErrorCode());

        try (var cursor = jobs.watch().startAfter(invalidate).maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
            jobs.insertOne(new Document("_id", 9)); // the collection again, after the drop
            ChangeStreamDocument<Document> event = cursor.tryNext();
            assertEquals(OperationType.INSERT, event.getOperationType());
            assertEquals(9, event.getDocumentKey().getInt32("_id").getValue());
            assertNull(cursor.tryNext());
        }
    }
}
