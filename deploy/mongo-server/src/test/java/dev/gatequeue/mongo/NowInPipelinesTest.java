package dev.gatequeue.mongo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Date;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.bson.BsonTimestamp;
import org.bson.Document;
import org.junit.jupiter.api.Test;

import com.mongodb.client.MongoCollection;
import com.mongodb.client.model.FindOneAndUpdateOptions;
import com.mongodb.client.model.ReturnDocument;
import com.mongodb.client.model.UpdateOptions;

/**
 * {@code $$NOW} as service/store uses it: the server's clock, one value per command, in update
 * pipelines, in {@code $expr} filters, and in {@code $currentDate}'s stead.
 */
class NowInPipelinesTest extends ServerTestBase {

    private static List<Document> pipeline(Document... stages) {
        return List.of(stages);
    }

    /** A BSON date holds milliseconds: the server's clock, cut as the server cuts it. */
    private static long millisNow() {
        return System.currentTimeMillis();
    }

    @Test
    void aSetOfNowStoresTheServersTime() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 1));
        long before = millisNow();
        jobs.updateOne(new Document("_id", 1), pipeline(new Document("$set", new Document("leasedAt", "$$NOW"))));
        long after = millisNow();
        Date at = jobs.find().first().getDate("leasedAt");
        assertTrue(at.getTime() >= before && at.getTime() <= after, at + " not in [" + before + ", " + after + "]");
    }

    @Test
    void oneCommandSeesOneNowInEveryDocument() {
        MongoCollection<Document> jobs = collection("jobs");
        List<Document> docs = new ArrayList<>();
        for (int i = 0; i < 200; i++) {
            docs.add(new Document("_id", i));
        }
        jobs.insertMany(docs);
        jobs.updateMany(new Document(), pipeline(new Document("$set", new Document("at", "$$NOW"))));
        Set<Date> times = new HashSet<>();
        for (Document d : jobs.find()) {
            times.add(d.getDate("at"));
        }
        assertEquals(1, times.size(), "$$NOW is evaluated once per command");
    }

    @Test
    void everyFieldOfASetSeesTheStagesInput() {
        MongoCollection<Document> jobs = collection("jobs");
        Date old = new Date(millisNow() - 60_000);
        jobs.insertOne(new Document("_id", 1).append("lease", old));
        // as service/store renews a lease: `late` compares with the lease before this update
        jobs.updateOne(new Document("_id", 1), pipeline(new Document("$set",
            new Document("lease", new Document("$add", List.of("$$NOW", 30_000)))
                .append("late", new Document("$gt", List.of("$$NOW", "$lease"))))));
        Document d = jobs.find().first();
        assertTrue(d.getBoolean("late"));
        assertTrue(d.getDate("lease").getTime() > millisNow());
    }

    @Test
    void nowInAnExprFilterFindsExpiredLeases() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertMany(List.of(
            new Document("_id", "expired").append("lease", new Date(millisNow() - 10_000)),
            new Document("_id", "held").append("lease", new Date(millisNow() + 600_000))));
        Document expired = new Document("$expr", new Document("$lt", List.of("$lease", "$$NOW")));
        List<Object> found = new ArrayList<>();
        jobs.find(expired).forEach(d -> found.add(d.get("_id")));
        assertEquals(List.of("expired"), found);

        // a claim: match by $$NOW, write $$NOW, return the new document (findAndModify)
        Document claimed = jobs.findOneAndUpdate(expired,
            pipeline(new Document("$set", new Document("claimedAt", "$$NOW").append("state", "running"))),
            new FindOneAndUpdateOptions().returnDocument(ReturnDocument.AFTER));
        assertEquals("expired", claimed.get("_id"));
        assertEquals(claimed.getDate("claimedAt"), jobs.find(new Document("_id", "expired")).first().getDate("claimedAt"),
            "what the client reads back is what was stored (milliseconds)");
    }

    @Test
    void anUpsertByPipelineSeedsFromTheQueryAndSetsNow() {
        MongoCollection<Document> workers = collection("workers");
        workers.updateOne(new Document("_id", "w1"),
            pipeline(new Document("$set", new Document("heartbeatAt", "$$NOW"))), new UpdateOptions().upsert(true));
        Document d = workers.find().first();
        assertEquals("w1", d.get("_id"));
        assertTrue(d.get("heartbeatAt") instanceof Date);
    }

    @Test
    void currentDateUsesTheSameClockAndATimestampTick() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 1));
        long before = millisNow();
        jobs.updateOne(new Document("_id", 1), new Document("$currentDate",
            new Document("updatedAt", true).append("tick", new Document("$type", "timestamp"))));
        Document d = jobs.find().first();
        assertTrue(d.getDate("updatedAt").getTime() >= before);
        BsonTimestamp tick = (BsonTimestamp) d.get("tick");
        assertFalse(tick.getInc() == 0, "a tick of the cluster clock, not increment 0");
    }

    @Test
    void clusterTimeIsAVariableToo() {
        MongoCollection<Document> jobs = collection("jobs");
        jobs.insertOne(new Document("_id", 1));
        jobs.updateOne(new Document("_id", 1), pipeline(new Document("$set", new Document("ct", "$$CLUSTER_TIME"))));
        assertTrue(jobs.find().first().get("ct") instanceof BsonTimestamp);
    }
}
