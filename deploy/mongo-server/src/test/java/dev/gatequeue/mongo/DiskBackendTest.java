package dev.gatequeue.mongo;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.IOException;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

import org.bson.BsonDocument;
import org.bson.Document;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoClients;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.model.changestream.ChangeStreamDocument;

/**
 * The H2 backend (--data-dir) across a restart: data and change log survive, and collections the
 * library opens while the backend is being constructed still report their writes to the log.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class DiskBackendTest {

    private static EmbeddedServer start(Path dir) throws IOException {
        return EmbeddedServer.start(Options.parse(new String[] {"--port", "0", "--data-dir", dir.toString()}));
    }

    @Test
    void aStreamResumesAcrossARestartAndSeesWritesAfterIt(@TempDir Path dir) throws IOException {
        BsonDocument token;
        try (EmbeddedServer server = start(dir); MongoClient client = MongoClients.create(server.uri())) {
            MongoCollection<Document> jobs = client.getDatabase("gq").getCollection("jobs");
            try (var cursor = jobs.watch().maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
                jobs.insertOne(new Document("_id", 1));
                token = cursor.tryNext().getResumeToken();
            }
            jobs.insertOne(new Document("_id", 2));
        }
        try (EmbeddedServer server = start(dir); MongoClient client = MongoClients.create(server.uri())) {
            MongoCollection<Document> jobs = client.getDatabase("gq").getCollection("jobs");
            assertEquals(2, jobs.countDocuments());
            try (var cursor = jobs.watch().resumeAfter(token).maxAwaitTime(50, TimeUnit.MILLISECONDS).cursor()) {
                assertEquals(2, cursor.tryNext().getDocumentKey().getInt32("_id").getValue(), "from the log on disk");
                jobs.insertOne(new Document("_id", 3)); // a collection opened by the backend's constructor
                ChangeStreamDocument<Document> event = cursor.tryNext();
                assertEquals(3, event.getDocumentKey().getInt32("_id").getValue());
            }
        }
    }
}
