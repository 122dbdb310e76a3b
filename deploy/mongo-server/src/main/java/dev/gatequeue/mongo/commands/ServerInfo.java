package dev.gatequeue.mongo.commands;

import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.wire.BsonConstants;
import de.bwaldvogel.mongo.wire.MongoWireProtocolHandler;

import dev.gatequeue.mongo.failpoints.FailPoints;
import dev.gatequeue.mongo.wire.Request;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.Mongod.CURSOR_IDLE_TIMEOUT_MS;
import static dev.gatequeue.mongo.Mongod.ELECTION_ID;
import static dev.gatequeue.mongo.Mongod.VERSION;
import static dev.gatequeue.mongo.wire.Replies.isTrue;
import static dev.gatequeue.mongo.wire.Replies.ok;

/** What drivers' test suites ask a server about itself (their client_context). */
public final class ServerInfo {
    /** The parameters we have, with their mongod names; getParameter answers these only. */
    private static final Map<String, Object> PARAMETERS = parameters();

    private ServerInfo() {
    }

    private static Map<String, Object> parameters() {
        Map<String, Object> p = new LinkedHashMap<>();
        p.put("enableTestCommands", Boolean.TRUE); // configureFailPoint works (see FailPoints)
        p.put("featureCompatibilityVersion", new Document("version", "6.0"));
        p.put("authenticationMechanisms", List.of()); // no authentication at all
        p.put("requireApiVersion", Boolean.FALSE);
        p.put("transactionLifetimeLimitSeconds", 60);
        p.put("cursorTimeoutMillis", CURSOR_IDLE_TIMEOUT_MS);
        return p;
    }

    /** {getParameter: "*"} for all, or {getParameter: 1, name: 1, ...}; unknown names fail as on mongod. */
    static Document getParameter(String db, Document body) {
        if (!db.equals("admin")) {
            throw new MongoServerError(13, "Unauthorized", "getParameter may only be run against the admin database.");
        }
        Document response = new Document();
        if ("*".equals(body.get("getParameter")) || (body.get("getParameter") instanceof Document
            && isTrue(((Document) body.get("getParameter")).get("allParameters")))) {
            response.putAll(PARAMETERS);
            return ok(response);
        }
        for (String key : body.keySet()) {
            if (key.equals("getParameter") || key.startsWith("$") || Commands.ENVELOPE.contains(key)
                || key.equals("comment")) {
                continue;
            }
            if (PARAMETERS.containsKey(key)) {
                response.put(key, PARAMETERS.get(key));
            }
        }
        if (response.isEmpty()) {
            throw new MongoServerError(72, "InvalidOptions", "no option found to get");
        }
        return ok(response);
    }

    static Document buildInfo() {
        List<Integer> version = VERSION.getVersionArray();
        return ok(new Document("version", version.get(0) + "." + version.get(1) + "." + version.get(2))
            .append("gitVersion", "gatequeue-embedded-mongo-java-server-1.47.0")
            .append("modules", List.of())
            .append("allocator", "system")
            .append("javascriptEngine", "none")
            .append("sysInfo", "deprecated")
            .append("versionArray", List.of(version.get(0), version.get(1), version.get(2), 0))
            .append("bits", 64)
            .append("debug", Boolean.FALSE)
            .append("maxBsonObjectSize", BsonConstants.MAX_BSON_OBJECT_SIZE)
            .append("storageEngines", List.of("ephemeralForTest")));
    }

    static Document cmdLineOpts(Server server, String db) {
        if (!db.equals("admin")) {
            throw new MongoServerError(13, "Unauthorized", "getCmdLineOpts may only be run against the admin database.");
        }
        Document parsed = new Document("net", new Document("bindIp", "127.0.0.1").append("port", server.port()))
            .append("replication", new Document("replSetName", server.options.replicaSet))
            .append("setParameter", new Document("enableTestCommands", "1"));
        return ok(new Document("argv", List.of("gatequeue-mongo-server", "--port", String.valueOf(server.port()),
            "--replica-set", server.options.replicaSet)).append("parsed", parsed));
    }
    static Document hello(Server server, Request request, String command) {
        Object client = request.body.get("client");
        if (client instanceof Document && ((Document) client).get("application") instanceof Document) {
            Object app = ((Document) ((Document) client).get("application")).get("name");
            if (app instanceof String) {
                request.ctx.channel().attr(Request.APP_NAME).set((String) app);
            }
        }
        Document response = new Document();
        response.put("helloOk", Boolean.TRUE);
        if (command.equals("hello")) {
            response.put("isWritablePrimary", Boolean.TRUE);
        } else {
            response.put("ismaster", Boolean.TRUE);
        }
        response.put("secondary", Boolean.FALSE);
        response.put("setName", server.options.replicaSet);
        response.put("setVersion", 1);
        response.put("electionId", ELECTION_ID);
        response.put("hosts", List.of(server.me()));
        response.put("primary", server.me());
        response.put("me", server.me());
        response.put("maxBsonObjectSize", BsonConstants.MAX_BSON_OBJECT_SIZE);
        response.put("maxMessageSizeBytes", MongoWireProtocolHandler.MAX_MESSAGE_SIZE_BYTES);
        response.put("maxWriteBatchSize", MongoWireProtocolHandler.MAX_WRITE_BATCH_SIZE);
        response.put("localTime", Instant.ofEpochMilli(System.currentTimeMillis()));
        response.put("logicalSessionTimeoutMinutes", 30);
        response.put("connectionId", request.ctx.channel().attr(Request.CONNECTION_ID).get());
        response.put("minWireVersion", 0);
        response.put("maxWireVersion", VERSION.getWireVersion());
        response.put("readOnly", Boolean.FALSE);
        // No topologyVersion: without it drivers poll hello every heartbeatFrequencyMS instead
        // of streaming it, which would need an awaitable hello.
        return ok(response);
    }

    static Document replSetGetStatus(Server server) {
        Document member = new Document("_id", 0)
            .append("name", server.me())
            .append("health", 1.0)
            .append("state", 1)
            .append("stateStr", "PRIMARY")
            .append("self", Boolean.TRUE);
        return ok(new Document("set", server.options.replicaSet)
            .append("date", Instant.now())
            .append("myState", 1)
            .append("members", List.of(member)));
    }
}
