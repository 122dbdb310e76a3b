package dev.gatequeue.mongo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;

import org.bson.Document;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import com.mongodb.MongoCommandException;
import com.mongodb.MongoException;
import com.mongodb.MongoSocketException;
import com.mongodb.MongoWriteConcernException;
import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.MongoCursor;

/**
 * configureFailPoint as the server implements it: failCommand (errorCode with its labels,
 * closeConnection, blockConnection, writeConcernError; appName and namespace filters),
 * failGetMoreAfterCursorCheckout and onPrimaryTransactionalWrite, in the modes alwaysOn, off,
 * times, skip and activationProbability.
 */
class FailPointsTest extends ServerTestBase {

    @AfterEach
    void allOff() {
        for (String name : List.of("failCommand", "failGetMoreAfterCursorCheckout", "onPrimaryTransactionalWrite")) {
            admin(new Document("configureFailPoint", name).append("mode", "off"));
        }
    }

    private Document failPoint(String name, Object mode, Document data) {
        return admin(new Document("configureFailPoint", name).append("mode", mode).append("data", data));
    }

    private static Document failing(String command) {
        return new Document("failCommands", List.of(command));
    }

    /** A client that does not retry: each failure the server answers reaches the test. */
    private MongoClient noRetries() {
        return client("&retryReads=false&retryWrites=false");
    }

    private static int code(Runnable command) {
        return assertThrows(MongoCommandException.class, command::run).getErrorCode();
    }

    @Test
    void timesFailsTheNextCommandsThenStops() {
        collection("jobs").insertOne(new Document("_id", 1));
        failPoint("failCommand", new Document("times", 2), failing("find").append("errorCode", 2));
        try (MongoClient c = noRetries()) {
            MongoCollection<Document> jobs = c.getDatabase(db.getName()).getCollection("jobs");
            assertEquals(2, code(() -> jobs.find().first()));
            assertEquals(2, code(() -> jobs.find().first()));
            assertEquals(1, jobs.find().first().getInteger("_id"));
        }
        Document off = admin(new Document("configureFailPoint", "failCommand").append("mode", "off"));
        assertEquals(2L, ((Number) off.get("count")).longValue(), "count: how often the previous one fired");
    }

    @Test
    void skipLetsTheFirstCommandsThrough() {
        failPoint("failCommand", new Document("skip", 1), failing("insert").append("errorCode", 2));
        try (MongoClient c = noRetries()) {
            MongoCollection<Document> jobs = c.getDatabase(db.getName()).getCollection("jobs");
            jobs.insertOne(new Document("_id", 1));
            assertEquals(2, assertThrows(MongoException.class, () -> jobs.insertOne(new Document("_id", 2))).getCode());
        }
    }

    @Test
    void activationProbabilityZeroNeverFiresAndOneAlways() {
        collection("jobs").insertOne(new Document("_id", 1));
        failPoint("failCommand", new Document("activationProbability", 0), failing("find").append("errorCode", 2));
        for (int i = 0; i < 20; i++) {
            assertEquals(1, collection("jobs").find().first().getInteger("_id"));
        }
        failPoint("failCommand", new Document("activationProbability", 1), failing("find").append("errorCode", 2));
        for (int i = 0; i < 20; i++) {
            assertEquals(2, code(() -> collection("jobs").find().first()));
        }
    }

    @Test
    void errorLabelsGivenReplaceTheServersOwn() {
        failPoint("failCommand", "alwaysOn", failing("find").append("errorCode", 91)
            .append("errorLabels", List.of("SomethingElse")));
        try (MongoClient c = noRetries()) {
            MongoCommandException e = assertThrows(MongoCommandException.class,
                () -> c.getDatabase(db.getName()).getCollection("jobs").find().first());
            assertEquals(91, e.getErrorCode());
            assertEquals("ShutdownInProgress", e.getErrorCodeName());
            assertTrue(e.hasErrorLabel("SomethingElse"));
        }
    }

    @Test
    void aRetryableWriteGetsTheRetryableLabelAndTheDriverRetriesIt() {
        failPoint("failCommand", new Document("times", 1), failing("insert").append("errorCode", 91));
        collection("jobs").insertOne(new Document("_id", 1)); // retryWrites: failed once, then applied
        assertEquals(1, collection("jobs").countDocuments());
    }

    @Test
    void closeConnectionDropsTheSocket() {
        failPoint("failCommand", new Document("times", 1), failing("find").append("closeConnection", true));
        try (MongoClient c = noRetries()) {
            MongoCollection<Document> jobs = c.getDatabase(db.getName()).getCollection("jobs");
            assertThrows(MongoSocketException.class, () -> jobs.find().first());
            jobs.find().first(); // a new connection works
        }
    }

    @Test
    void blockConnectionDelaysTheCommandThatThenRuns() {
        failPoint("failCommand", new Document("times", 1), failing("insert")
            .append("blockConnection", true).append("blockTimeMS", 200));
        long started = System.nanoTime();
        collection("jobs").insertOne(new Document("_id", 1));
        long elapsedMs = (System.nanoTime() - started) / 1_000_000;
        assertTrue(elapsedMs >= 200, "answered after " + elapsedMs + " ms");
        assertEquals(1, collection("jobs").countDocuments());

        MongoCommandException e = assertThrows(MongoCommandException.class, () -> failPoint("failCommand",
            "alwaysOn", failing("insert").append("blockConnection", true)));
        assertEquals(72, e.getErrorCode(), "blockConnection needs blockTimeMS");
    }

    @Test
    void writeConcernErrorAppliesTheWriteAndReportsTheError() {
        failPoint("failCommand", new Document("times", 1), failing("insert")
            .append("writeConcernError", new Document("code", 64).append("errmsg", "waiting for replication timed out")));
        try (MongoClient c = noRetries()) {
            MongoCollection<Document> jobs = c.getDatabase(db.getName()).getCollection("jobs");
            MongoWriteConcernException e = assertThrows(MongoWriteConcernException.class,
                () -> jobs.insertOne(new Document("_id", 1)));
            assertEquals(64, e.getWriteConcernError().getCode());
            assertEquals(1, jobs.countDocuments(), "applied: the outcome is only unknown to the client");
        }
    }

    @Test
    void appNameAndNamespaceFilterWhatFails() {
        collection("jobs").insertOne(new Document("_id", 1));
        collection("other").insertOne(new Document("_id", 1));
        failPoint("failCommand", "alwaysOn", failing("find").append("errorCode", 2)
            .append("appName", "victim").append("namespace", db.getName() + ".jobs"));
        try (MongoClient victim = client("&appName=victim&retryReads=false")) {
            var victimDb = victim.getDatabase(db.getName());
            assertEquals(2, code(() -> victimDb.getCollection("jobs").find().first()));
            assertEquals(1, victimDb.getCollection("other").find().first().getInteger("_id"));
        }
        assertEquals(1, collection("jobs").find().first().getInteger("_id"), "other clients are not affected");
    }

    @Test
    void failGetMoreAfterCursorCheckoutKillsTheCursor() {
        List<Document> docs = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            docs.add(new Document("_id", i));
        }
        collection("jobs").insertMany(docs);
        failPoint("failGetMoreAfterCursorCheckout", new Document("times", 1), new Document("errorCode", 2));
        try (MongoClient c = noRetries()) {
            MongoCursor<Document> cursor = c.getDatabase(db.getName()).getCollection("jobs").find().batchSize(2).iterator();
            cursor.next();
            cursor.next();
            MongoCommandException e = assertThrows(MongoCommandException.class, cursor::next);
            assertEquals(2, e.getErrorCode());
        }
        // the cursor died with the failed getMore: a getMore on its id finds nothing
        Document first = db.runCommand(new Document("find", "jobs").append("batchSize", 2));
        long id = ((Document) first.get("cursor")).getLong("id");
        failPoint("failGetMoreAfterCursorCheckout", new Document("times", 1), new Document("errorCode", 2));
        assertThrows(MongoCommandException.class,
            () -> db.runCommand(new Document("getMore", id).append("collection", "jobs")));
        MongoCommandException gone = assertThrows(MongoCommandException.class,
            () -> db.runCommand(new Document("getMore", id).append("collection", "jobs")));
        assertEquals(43, gone.getErrorCode());
    }

    @Test
    void onPrimaryTransactionalWriteLosesTheReplyButNotTheWrite() {
        collection("counters").insertOne(new Document("_id", "c").append("n", 0));
        failPoint("onPrimaryTransactionalWrite", new Document("times", 1), new Document());
        // retryWrites: applied, connection closed before the reply, the retry gets the recorded result
        collection("counters").updateOne(new Document("_id", "c"), new Document("$inc", new Document("n", 1)));
        assertEquals(1, collection("counters").find().first().getInteger("n"), "applied once, not twice");
    }

    @Test
    void onPrimaryTransactionalWriteCanFailBeforeTheWrite() {
        failPoint("onPrimaryTransactionalWrite", new Document("times", 1),
            new Document("failBeforeCommitExceptionCode", 2).append("closeConnection", false));
        assertThrows(MongoException.class, () -> collection("jobs").insertOne(new Document("_id", 1)));
        assertEquals(0, collection("jobs").countDocuments(), "the write must not be reflected");
    }

    @Test
    void unknownFailPointsAndModesAreRefused() {
        MongoCommandException e = assertThrows(MongoCommandException.class,
            () -> failPoint("maxTimeAlwaysTimeOut", "alwaysOn", new Document()));
        assertEquals(2, e.getErrorCode());
        e = assertThrows(MongoCommandException.class,
            () -> failPoint("failCommand", new Document("sometimes", 1), new Document()));
        assertEquals(2, e.getErrorCode());
        e = assertThrows(MongoCommandException.class, () -> db.runCommand(
            new Document("configureFailPoint", "failCommand").append("mode", "off")));
        assertEquals(13, e.getErrorCode(), "only on admin");
    }
}
