package dev.gatequeue.mongo;

import java.io.IOException;
import java.io.InputStream;
import java.time.Instant;
import java.util.Objects;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import static dev.gatequeue.mongo.Mongod.VERSION;

/**
 * gatequeue's embedded MongoDB-compatible development server.
 *
 * <p>mongo-java-server speaks the wire protocol, but PyMongo 4.x's asyncio API cannot use a bare
 * instance: it reports wire version 8, has no {@code hello}, sends no {@code operationTime}, keeps
 * its oplog off, answers a change stream's {@code getMore} at once (so idle watchers spin), writes
 * no change events for {@code findAndModify}, and writes insert events for documents a unique index
 * rejected. This launcher keeps the library's storage and query engine and replaces the parts
 * around them: its own Netty pipeline and command dispatcher (handshake, cluster time, retryable
 * writes, awaiting getMore) and its own change log fed by hooks in the collections, so every
 * change event corresponds to a document that really changed. Around the library's query engine
 * it adds what gatequeue's reliability depends on and the library does differently or lacks:
 * mongod's reply batches (16 MiB), the server's clock in expressions ($$NOW once per command),
 * pipeline updates, mongod's fail points and error labels. See docs/embedded-mongo.md.
 *
 * <p>Usage: {@code java -jar gatequeue-mongo-server.jar [--port N] [--data-dir D]
 * [--replica-set NAME] [--watch-stdin] [--parent-pid PID] [--oplog-max-entries N]}. Prints exactly
 * one line, the connection string, on stdout once it accepts connections; logs go to stderr.
 *
 * <p>The pieces, by package: {@code wire} (Netty pipeline, decoder, dispatcher, replies),
 * {@code commands} (what the dispatcher answers itself, the write fixes, retryable writes,
 * error labels, awaiting getMore), {@code query} (mongod's batches, the server's clock in
 * expressions, pipelines), {@code update} (pipeline updates, $currentDate), {@code changes}
 * (change log, change streams, resume tokens), {@code failpoints}, {@code backend} (memory and
 * H2 with the change hooks). {@link EmbeddedServer} wires them together.
 */
public final class GateQueueMongoServer {

    private GateQueueMongoServer() {
    }

    public static void main(String[] args) {
        // slf4j-simple reads these on first use: everything to stderr, stdout is the URI only.
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "info");
        System.setProperty("org.slf4j.simpleLogger.log.de.bwaldvogel", "error");
        System.setProperty("org.slf4j.simpleLogger.log.io.netty", "warn");
        System.setProperty("org.slf4j.simpleLogger.log.org.h2", "warn");
        System.setProperty("org.slf4j.simpleLogger.showDateTime", "true");
        System.setProperty("org.slf4j.simpleLogger.dateTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSZ");
        System.setProperty("org.slf4j.simpleLogger.showThreadName", "false");
        Logger log = LoggerFactory.getLogger("gatequeue.mongo");

        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("gatequeue-mongo-server: " + e.getMessage());
            System.exit(2);
            return;
        }
        try {
            run(options, log);
        } catch (Throwable e) {
            String hint = String.valueOf(e.getMessage()).contains("The file is locked")
                ? " (is another embedded server using this data directory?)" : "";
            if (Boolean.getBoolean("gatequeue.debug")) {
                log.error("failed to start: {}{}", e, hint, e);
            } else {
                log.error("failed to start: {}{}", e, hint);
            }
            System.exit(1);
        }
    }

    private static void run(Options options, Logger log) throws IOException {
        EmbeddedServer server = EmbeddedServer.start(options);

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            log.info("shutting down");
            server.close();
        }, "shutdown"));

        String uri = server.uri();
        log.info("gatequeue embedded MongoDB ({}, wire version {}) listening on 127.0.0.1:{}",
            options.dataDir == null ? "memory backend" : "H2 backend, data in " + options.dataDir,
            VERSION.getWireVersion(), server.port());
        System.out.println(uri);
        System.out.flush();

        if (options.watchStdin) {
            Thread t = new Thread(() -> {
                try {
                    InputStream in = System.in;
                    byte[] buf = new byte[256];
                    while (in.read(buf) != -1) {
                        // the parent never writes; we only wait for the pipe to close
                    }
                } catch (IOException e) {
                    // a broken pipe means the same as EOF
                }
                log.info("stdin closed (parent gone); exiting");
                System.exit(0);
            }, "stdin-watch");
            t.setDaemon(true);
            t.start();
        }
        if (options.parentPid > 0) {
            long pid = options.parentPid;
            Thread t = new Thread(() -> {
                Instant started = ProcessHandle.of(pid).flatMap(h -> h.info().startInstant()).orElse(null);
                while (true) {
                    var handle = ProcessHandle.of(pid);
                    boolean alive = handle.isPresent() && handle.get().isAlive()
                        && Objects.equals(started, handle.get().info().startInstant().orElse(null));
                    if (!alive) {
                        log.info("parent process {} gone; exiting", pid);
                        System.exit(0);
                    }
                    try {
                        Thread.sleep(1000);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }, "parent-watch");
            t.setDaemon(true);
            t.start();
        }
    }
}
