package dev.gatequeue.mongo;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

import org.h2.mvstore.MVStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import dev.gatequeue.mongo.backend.Backend;
import dev.gatequeue.mongo.backend.Backends;
import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.Mongod.VERSION;

/**
 * One running server: its change log, its backend (memory, or H2 in {@code --data-dir}) and its
 * network side, wired together. The launcher runs one; the tests start as many as they like in
 * one JVM, since every piece of state lives in here.
 */
public final class EmbeddedServer implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger("gatequeue.mongo");

    private final Options options;
    private final Backend backend;
    private final Server server;

    private EmbeddedServer(Options options, Backend backend, Server server) {
        this.options = options;
        this.backend = backend;
        this.server = server;
    }

    /** Builds the backend, replays a persisted change log, and listens on 127.0.0.1. */
    public static EmbeddedServer start(Options options) throws IOException {
        ChangeLog changes = new ChangeLog(options.oplogMaxEntries);
        Backend backend;
        if (options.dataDir == null) {
            backend = Backends.memory(changes);
        } else {
            Files.createDirectories(options.dataDir);
            Path file = options.dataDir.resolve("embedded-mongo.mv.db").toAbsolutePath();
            MVStore store = new MVStore.Builder().fileName(file.toString()).compress().open();
            backend = Backends.disk(changes, store);
        }
        backend.library().version(VERSION);
        changes.attach(backend, options.dataDir != null);
        backend.library().enableOplog();

        Server server = new Server(backend, changes, options);
        server.start();
        return new EmbeddedServer(options, backend, server);
    }

    public int port() {
        return server.port();
    }

    /** The connection string the launcher prints: a one-member replica set. */
    public String uri() {
        return "mongodb://127.0.0.1:" + server.port() + "/?replicaSet=" + options.replicaSet;
    }

    /** Stops listening, then closes the backend (the H2 file is flushed and released). */
    @Override
    public void close() {
        server.stop();
        try {
            backend.library().close();
        } catch (RuntimeException e) {
            log.warn("closing the backend failed: {}", e.toString());
        }
    }
}
