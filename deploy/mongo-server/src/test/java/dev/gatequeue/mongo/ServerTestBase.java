package dev.gatequeue.mongo;

import java.io.IOException;
import java.util.concurrent.TimeUnit;

import org.bson.Document;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.TestInfo;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

import com.mongodb.ConnectionString;
import com.mongodb.MongoClientSettings;
import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoClients;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.MongoDatabase;

/**
 * One in-process server (memory backend, a free port) per test class, and a MongoDB Java
 * driver client on it: the tests meet the server as every client does, through the wire.
 * Each test gets a database of its own, so tests of a class never see each other's data.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 30, unit = TimeUnit.SECONDS)
abstract class ServerTestBase {
    protected EmbeddedServer server;
    protected MongoClient client;
    protected MongoDatabase db;

    @BeforeAll
    void startServer() throws IOException {
        server = EmbeddedServer.start(Options.parse(new String[] {"--port", "0", "--threads", "2"}));
        client = client("");
    }

    @AfterAll
    void stopServer() {
        if (client != null) {
            client.close();
        }
        if (server != null) {
            server.close();
        }
    }

    @BeforeEach
    void database(TestInfo test) {
        String name = test.getTestMethod().orElseThrow().getName();
        db = client.getDatabase(name.length() > 60 ? name.substring(0, 60) : name);
    }

    /** Another client; {@code options} are URI options such as {@code &retryWrites=false}. */
    protected MongoClient client(String options) {
        ConnectionString uri = new ConnectionString(server.uri() + options);
        return MongoClients.create(MongoClientSettings.builder()
            .applyConnectionString(uri)
            .applyToClusterSettings(c -> c.serverSelectionTimeout(10, TimeUnit.SECONDS))
            .build());
    }

    protected MongoCollection<Document> collection(String name) {
        return db.getCollection(name);
    }

    protected Document admin(Document command) {
        return client.getDatabase("admin").runCommand(command);
    }
}
