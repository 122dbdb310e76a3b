package dev.gatequeue.mongo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.bson.BsonDocument;
import org.bson.BsonString;
import org.bson.Document;
import org.junit.jupiter.api.Test;

import com.mongodb.MongoCommandException;
import com.mongodb.client.ChangeStreamIterable;
import com.mongodb.client.MongoChangeStreamCursor;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.model.changestream.ChangeStreamDocument;
import com.mongodb.client.model.changestream.OperationType;

/** Resuming a change stream from a token: every later event once, in order, none before it. */
class ChangeStreamResumeTest extends ServerTestBase {

    private static ChangeStreamIterable<Document> watch(MongoCollection<Document> coll) {
        return coll.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS);
    }

    /**
     * The next {@code n} events. The writes that made them were answered before this runs, and
     * the server logs an event before it answers the write, so each getMore finds one at once.
     */
    private static List<ChangeStreamDocument<Document>> take(
            MongoChangeStreamCursor<ChangeStreamDocument<Document>> cursor, int n) {
        List<ChangeStreamDocument<Document>> events = new ArrayList<>();
        while (events.size() < n) {
            ChangeStreamDocument<Document> event = cursor.tryNext();
            assertNotNull(event, "event " + (events.size() + 1) + " of " + n + " missing; got " + events);
            events.add(event);
        }
        return events;
    }

    private static List<Object> ids(List<ChangeStreamDocument<Document>> events) {
        List<Object> ids = new ArrayList<>();
        for (ChangeStreamDocument<Document> e : events) {
            ids.add(e.getDocumentKey().getInt32("_id").getValue());
        }
        return ids;
    }

    @Test
    void resumeAfterDeliversEveryLaterEventOnceInOrder() {
        MongoCollection<Document> jobs = collection("jobs");
        BsonDocument afterFirst;
        try (var cursor = watch(jobs).cursor()) {
            for (int i = 1; i <= 3; i++) {
                jobs.insertOne(new Document("_id", i));
            }
            List<ChangeStreamDocument<Document>> events = take(cursor, 3);
            assertEquals(List.of(1, 2, 3), ids(events));
            afterFirst = events.get(0).getResumeToken();
        }
        jobs.insertOne(new Document("_id", 4)); // while nobody watches
        jobs.updateOne(new Document("_id", 2), new Document("$set", new Document("state", "done")));

        try (var cursor = watch(jobs).resumeAfter(afterFirst).cursor()) {
            List<ChangeStreamDocument<Document>> events = take(cursor, 4);
            assertEquals(List.of(2, 3, 4, 2), ids(events));
            assertEquals(OperationType.UPDATE, events.get(3).getOperationType());
            assertEquals(new Document("state", "done").toBsonDocument(),
                events.get(3).getUpdateDescription().getUpdatedFields());
            assertNull(cursor.tryNext(), "no event twice, none invented");
        }
    }

    @Test
    void startAfterATokenDeliversTheSameEvents() {
        MongoCollection<Document> jobs = collection("jobs");
        BsonDocument second;
        try (var cursor = watch(jobs).cursor()) {
            jobs.insertMany(List.of(new Document("_id", 1), new Document("_id", 2), new Document("_id", 3)));
            second = take(cursor, 3).get(1).getResumeToken();
        }
        try (var cursor = watch(jobs).startAfter(second).cursor()) {
            assertEquals(List.of(3), ids(take(cursor, 1)));
            jobs.insertOne(new Document("_id", 5));
            assertEquals(List.of(5), ids(take(cursor, 1)));
            assertNull(cursor.tryNext());
        }
    }

    @Test
    void thePostBatchTokenOfAnIdleStreamResumesWithoutLosingEvents() {
        MongoCollection<Document> jobs = collection("jobs");
        BsonDocument token;
        try (var cursor = watch(jobs).cursor()) {
            assertNull(cursor.tryNext());
            token = cursor.getResumeToken(); // postBatchResumeToken: no event seen yet
        }
        jobs.insertOne(new Document("_id", 7));
        try (var cursor = watch(jobs).resumeAfter(token).cursor()) {
            assertEquals(List.of(7), ids(take(cursor, 1)));
        }
    }

    @Test
    void aTokenNotIssuedByThisServerIsRefused() {
        BsonDocument foreign = new BsonDocument("_data", new BsonString("8263A1B2C3000000012B022C0100296E5A1004"));
        MongoCommandException e = assertThrows(MongoCommandException.class,
            () -> watch(collection("jobs")).resumeAfter(foreign).cursor().close());
        assertEquals(260, e.getErrorCode());
    }

    @Test
    void aResumePointTrimmedFromTheLogIsHistoryLost() {
        MongoCollection<Document> jobs = collection("jobs");
        BsonDocument token;
        try (var cursor = watch(jobs).cursor()) {
            jobs.insertOne(new Document("_id", 1));
            token = take(cursor, 1).get(0).getResumeToken();
        }
        jobs.insertOne(new Document("_id", 2));
        admin(new Document("gatequeueTrimChangeLog", 1).append("keep", 0));
        MongoCommandException e = assertThrows(MongoCommandException.class,
            () -> watch(jobs).resumeAfter(token).cursor().close());
        assertEquals(286, e.getErrorCode());
        assertEquals("ChangeStreamHistoryLost", e.getErrorCodeName());
    }
}
