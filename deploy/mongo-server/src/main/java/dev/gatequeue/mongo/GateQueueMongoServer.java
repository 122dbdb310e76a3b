package dev.gatequeue.mongo;

import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import java.util.stream.Stream;

import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.AbstractMongoBackend;
import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.backend.ArrayFilters;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.backend.aggregation.Expression;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;
import de.bwaldvogel.mongo.oplog.Oplog;
import de.bwaldvogel.mongo.wire.BsonConstants;
import de.bwaldvogel.mongo.wire.MongoExceptionHandler;
import de.bwaldvogel.mongo.wire.MongoWireMessageEncoder;
import de.bwaldvogel.mongo.wire.MongoWireProtocolHandler;
import de.bwaldvogel.mongo.wire.MongoWireReplyEncoder;
import de.bwaldvogel.mongo.wire.bson.BsonEncoder;
import de.bwaldvogel.mongo.wire.message.ClientRequest;
import de.bwaldvogel.mongo.wire.message.MessageHeader;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import de.bwaldvogel.mongo.wire.message.MongoQuery;
import de.bwaldvogel.mongo.wire.message.MongoReply;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.util.AttributeKey;
import io.netty.util.concurrent.DefaultThreadFactory;

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
 */
public final class GateQueueMongoServer {

    /** MongoDB 6.0: the oldest server version gatequeue supports in production (docs/design.md). */
    static final MongoVersion VERSION = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(6, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 17;
        }
    };

    static final long DEFAULT_AWAIT_MS = 1000;
    static final long CURSOR_IDLE_TIMEOUT_MS = TimeUnit.MINUTES.toMillis(10);
    static final ObjectId ELECTION_ID = new ObjectId("7fffffff0000000000000001");
    static final Set<String> INTERNAL_DATABASES = Set.of("admin", "local", "config");

    // Set once in main before the backend exists: the library constructs databases and
    // collections from its own constructors, before any field of a subclass is assigned.
    static volatile ChangeLog changeLog;
    static volatile MVStore mvStore;
    static volatile Logger log;

    private GateQueueMongoServer() {
    }

    // ------------------------------------------------------------------ main

    static final class Options {
        int port = 0;
        Path dataDir;
        String replicaSet = "rs0";
        boolean watchStdin;
        long parentPid = -1;
        int oplogMaxEntries = 50_000;
        int threads = Math.max(2, Runtime.getRuntime().availableProcessors());

        static Options parse(String[] args) {
            Options o = new Options();
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                switch (a) {
                    case "--port":
                        o.port = Integer.parseInt(value(args, ++i, a));
                        break;
                    case "--data-dir":
                        o.dataDir = Paths.get(value(args, ++i, a));
                        break;
                    case "--replica-set":
                        o.replicaSet = value(args, ++i, a);
                        break;
                    case "--watch-stdin":
                        o.watchStdin = true;
                        break;
                    case "--parent-pid":
                        o.parentPid = Long.parseLong(value(args, ++i, a));
                        break;
                    case "--oplog-max-entries":
                        o.oplogMaxEntries = Integer.parseInt(value(args, ++i, a));
                        break;
                    case "--threads":
                        o.threads = Integer.parseInt(value(args, ++i, a));
                        break;
                    case "-h":
                    case "--help":
                        System.err.println("usage: gatequeue-mongo-server [--port N] [--data-dir DIR]"
                            + " [--replica-set NAME] [--watch-stdin] [--parent-pid PID]"
                            + " [--oplog-max-entries N] [--threads N]");
                        System.exit(0);
                        break;
                    default:
                        throw new IllegalArgumentException("unknown argument: " + a);
                }
            }
            if (o.port < 0 || o.port > 65535) {
                throw new IllegalArgumentException("--port must be 0..65535");
            }
            if (o.oplogMaxEntries < 100) {
                throw new IllegalArgumentException("--oplog-max-entries must be >= 100");
            }
            return o;
        }

        private static String value(String[] args, int i, String name) {
            if (i >= args.length) {
                throw new IllegalArgumentException(name + " needs a value");
            }
            return args[i];
        }
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
        log = LoggerFactory.getLogger("gatequeue.mongo");

        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("gatequeue-mongo-server: " + e.getMessage());
            System.exit(2);
            return;
        }
        try {
            run(options);
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

    private static void run(Options options) throws IOException {
        ChangeLog log0 = new ChangeLog(options.oplogMaxEntries);
        changeLog = log0;
        final AbstractMongoBackend backend;
        if (options.dataDir == null) {
            backend = new MemBackend();
        } else {
            Files.createDirectories(options.dataDir);
            Path file = options.dataDir.resolve("embedded-mongo.mv.db").toAbsolutePath();
            MVStore store = new MVStore.Builder().fileName(file.toString()).compress().open();
            mvStore = store;
            backend = new DiskBackend(store);
        }
        backend.version(VERSION);
        log0.attach((BackendAccess) backend, options.dataDir != null);
        backend.enableOplog();

        Server server = new Server(backend, log0, options);
        server.start();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            log.info("shutting down");
            server.stop();
            try {
                backend.close();
            } catch (RuntimeException e) {
                log.warn("closing the backend failed: {}", e.toString());
            }
        }, "shutdown"));

        String uri = "mongodb://127.0.0.1:" + server.port + "/?replicaSet=" + options.replicaSet;
        log.info("gatequeue embedded MongoDB ({}, wire version {}) listening on 127.0.0.1:{}",
            options.dataDir == null ? "memory backend" : "H2 backend, data in " + options.dataDir,
            VERSION.getWireVersion(), server.port);
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

    // ------------------------------------------------------------------ network

    /** The library's MongoServer with our dispatcher in its pipeline instead of its own. */
    static final class Server {
        final AbstractMongoBackend backend;
        final ChangeLog changes;
        final Options options;
        final Sessions sessions = new Sessions();
        final FailPoints failPoints = new FailPoints();
        final QueryCursors queryCursors = new QueryCursors();
        final BackendAccess access;
        final AtomicInteger connectionIds = new AtomicInteger();
        EventLoopGroup boss;
        EventLoopGroup workers;
        Channel channel;
        int port;

        Server(AbstractMongoBackend backend, ChangeLog changes, Options options) {
            this.backend = backend;
            this.access = (BackendAccess) backend;
            this.changes = changes;
            this.options = options;
            queryCursors.attach(access);
        }

        String me() {
            return "127.0.0.1:" + port;
        }

        void start() {
            boss = new NioEventLoopGroup(1, new DefaultThreadFactory("mongo-boss"));
            workers = new NioEventLoopGroup(options.threads, new DefaultThreadFactory("mongo-worker"));
            ServerBootstrap bootstrap = new ServerBootstrap()
                .group(boss, workers)
                .channel(NioServerSocketChannel.class)
                .option(ChannelOption.SO_BACKLOG, 128)
                .childOption(ChannelOption.TCP_NODELAY, Boolean.TRUE)
                .childHandler(new ChannelInitializer<SocketChannel>() {
                    @Override
                    public void initChannel(SocketChannel ch) {
                        ch.pipeline().addLast(new MongoWireReplyEncoder());
                        ch.pipeline().addLast(new MongoWireMessageEncoder());
                        ch.pipeline().addLast(new Decoder());
                        ch.pipeline().addLast(new Handler(Server.this));
                        ch.pipeline().addLast(new MongoExceptionHandler());
                    }
                });
            channel = bootstrap.bind(new InetSocketAddress("127.0.0.1", options.port))
                .syncUninterruptibly().channel();
            port = ((InetSocketAddress) channel.localAddress()).getPort();
            workers.scheduleAtFixedRate(changes::reapIdleCursors, 60, 60, TimeUnit.SECONDS);
            workers.scheduleAtFixedRate(queryCursors::reapIdle, 60, 60, TimeUnit.SECONDS);
        }

        void stop() {
            if (channel != null) {
                channel.close().syncUninterruptibly();
            }
            if (boss != null) {
                boss.shutdownGracefully(0, 2, TimeUnit.SECONDS).syncUninterruptibly();
            }
            if (workers != null) {
                workers.shutdownGracefully(0, 2, TimeUnit.SECONDS).syncUninterruptibly();
            }
        }
    }

    /** An OP_MSG the client sent with moreToCome: it reads no reply, so we must send none. */
    static final class NoReplyMessage extends MongoMessage {
        NoReplyMessage(MongoMessage m) {
            super(m.getChannel(), m.getHeader(), m.getDocument());
        }
    }

    /**
     * The library's decoder rejects any OP_MSG flag but checksumPresent; PyMongo sets moreToCome
     * for unacknowledged writes (w=0) and exhaustAllowed for exhaust cursors. We clear both (we
     * never stream replies) and remember moreToCome so that no reply is written.
     */
    static final class Decoder extends MongoWireProtocolHandler {
        private static final int OP_MSG = 2013;
        private static final int MORE_TO_COME = 1 << 1;
        private static final int EXHAUST_ALLOWED = 1 << 16;

        @Override
        protected ClientRequest decode(ChannelHandlerContext ctx, ByteBuf in) throws Exception {
            boolean noReply = false;
            int start = in.readerIndex();
            if (in.readableBytes() >= 20) {
                int length = in.getIntLE(start);
                if (in.readableBytes() >= length && in.getIntLE(start + 12) == OP_MSG) {
                    int flags = in.getIntLE(start + 16);
                    int cleared = flags & ~(MORE_TO_COME | EXHAUST_ALLOWED);
                    if (cleared != flags) {
                        in.setIntLE(start + 16, cleared);
                        noReply = (flags & MORE_TO_COME) != 0;
                    }
                }
            }
            ClientRequest request = super.decode(ctx, in);
            if (noReply && request instanceof MongoMessage) {
                return new NoReplyMessage((MongoMessage) request);
            }
            return request;
        }
    }

    /**
     * A command in flight: where to answer it (a deferred getMore answers later) and what the
     * reply needs to know about it (error labels depend on the command and its session fields).
     */
    static final class Request {
        final ChannelHandlerContext ctx;
        final ClientRequest message;
        String db;
        String command; // as the client spelled it
        String name; // lower case
        Document body;
        boolean changeStream; // an aggregate with $changeStream, or a getMore on one
        List<?> labelsOverride; // failCommand's errorLabels replace the server's own
        boolean closeAfterRun; // onPrimaryTransactionalWrite: applied, then the reply is lost

        Request(ChannelHandlerContext ctx, ClientRequest message) {
            this.ctx = ctx;
            this.message = message;
        }

        String appName() {
            return ctx.channel().attr(APP_NAME).get();
        }

        /** The namespace the command works on, as failCommand's {@code namespace} names it. */
        String namespace() {
            if (name.equals("getmore")) {
                return db + "." + body.get("collection");
            }
            Object target = body.get(command);
            return target instanceof String ? db + "." + target : db + ".$cmd";
        }
    }

    static final AttributeKey<Integer> CONNECTION_ID = AttributeKey.valueOf("gatequeue.connectionId");
    /** The client's appName from its handshake; failCommand's {@code appName} matches on it. */
    static final AttributeKey<String> APP_NAME = AttributeKey.valueOf("gatequeue.appName");

    /** Our replacement for the library's MongoDatabaseHandler. */
    static final class Handler extends SimpleChannelInboundHandler<ClientRequest> {
        private final Server server;
        private final AtomicInteger replyIds = new AtomicInteger();

        Handler(Server server) {
            this.server = server;
        }

        @Override
        public void channelActive(ChannelHandlerContext ctx) throws Exception {
            ctx.channel().attr(CONNECTION_ID).set(server.connectionIds.incrementAndGet());
            super.channelActive(ctx);
        }

        @Override
        public void channelInactive(ChannelHandlerContext ctx) throws Exception {
            server.backend.handleClose(ctx.channel());
            super.channelInactive(ctx);
        }

        @Override
        protected void channelRead0(ChannelHandlerContext ctx, ClientRequest message) {
            Request request = new Request(ctx, message);
            if (message instanceof MongoQuery) {
                MongoQuery query = (MongoQuery) message;
                if (!query.getCollectionName().startsWith("$cmd")) {
                    // OP_QUERY on a collection: gone from MongoDB 6.0 and never sent by PyMongo 4
                    QueryResult result = server.backend.handleQuery(query);
                    ctx.channel().writeAndFlush(new MongoReply(header(message),
                        result != null ? result.collectDocuments() : List.of(),
                        result != null ? result.getCursorId() : 0));
                    return;
                }
                Document body = query.getQuery();
                String command = body.keySet().iterator().next();
                if ("$query".equals(command)) {
                    body = (Document) body.get("$query");
                    command = body.keySet().iterator().next();
                }
                dispatch(request, query.getDatabaseName(), command, body);
            } else if (message instanceof MongoMessage) {
                MongoMessage msg = (MongoMessage) message;
                Document body = msg.getDocument();
                dispatch(request, msg.getDatabaseName(), body.keySet().iterator().next(), body);
            } else {
                throw new MongoServerException("unknown message: " + message);
            }
        }

        private MessageHeader header(ClientRequest request) {
            return new MessageHeader(replyIds.incrementAndGet(), request.getHeader().getRequestID());
        }

        /** Every answer goes out here: error labels, cluster time, or no reply at all. */
        void reply(Request request, Document response) {
            if (request.closeAfterRun) {
                request.ctx.channel().close();
                return;
            }
            if (request.name != null) {
                ErrorLabels.apply(request, response);
            }
            server.changes.stampClusterTime(response);
            if (request.message instanceof NoReplyMessage) {
                return;
            }
            Channel channel = request.ctx.channel();
            if (!channel.isActive()) {
                return;
            }
            if (request.message instanceof MongoQuery) {
                channel.writeAndFlush(new MongoReply(header(request.message), List.of(response), 0));
            } else {
                channel.writeAndFlush(new MongoMessage(channel, header(request.message), response));
            }
        }

        /**
         * failCommand acts before the command runs, as on mongod: it may block the connection for
         * a while (on a timer of the event loop, holding no thread), close it, or answer an error.
         */
        private void dispatch(Request request, String db, String command, Document body) {
            request.db = db;
            request.command = command;
            request.name = command.toLowerCase(Locale.ROOT);
            request.body = body;
            Document fail = server.failPoints.beforeCommand(request);
            if (fail == null) {
                run(request);
                return;
            }
            if (isTrue(fail.get("blockConnection"))) {
                long ms = ((Number) fail.getOrDefault("blockTimeMS", 0)).longValue();
                request.ctx.executor().schedule(() -> afterBlock(request, fail), ms, TimeUnit.MILLISECONDS);
                return;
            }
            afterBlock(request, fail);
        }

        private void afterBlock(Request request, Document fail) {
            if (isTrue(fail.get("closeConnection"))) {
                request.ctx.channel().close();
                return;
            }
            if (fail.get("errorCode") instanceof Number) {
                int code = ((Number) fail.get("errorCode")).intValue();
                if (fail.get("errorLabels") instanceof List) {
                    request.labelsOverride = (List<?>) fail.get("errorLabels");
                }
                reply(request, errorResponse(new MongoServerError(code, ErrorLabels.codeName(code),
                    "Failing command via 'failCommand' failpoint")));
                return;
            }
            run(request); // blockConnection alone: the command runs after the wait
        }

        private void run(Request request) {
            Document response;
            try {
                response = Commands.run(server, this, request);
                if (response != null) {
                    server.failPoints.writeConcernError(request, response);
                }
            } catch (MongoServerException e) {
                if (e.isLogError() && !(e instanceof MongoServerError)) {
                    log.warn("{} failed: {}", request.command, e.getMessageWithoutErrorCode());
                }
                response = errorResponse(e);
            } catch (RuntimeException e) {
                log.error("{} failed", request.command, e);
                response = errorResponse(new MongoServerError(1, "InternalError",
                    "internal error in the embedded server: " + e));
            }
            if (response != null) { // null: a getMore that answers later
                reply(request, response);
            }
        }
    }

    static Document errorResponse(MongoServerException e) {
        Document response = new Document();
        response.put("ok", 0.0);
        response.put("errmsg", e.getMessageWithoutErrorCode());
        if (e instanceof MongoServerError) {
            MongoServerError error = (MongoServerError) e;
            response.put("code", error.getCode());
            response.putIfNotNull("codeName", error.getCodeName() != null ? error.getCodeName()
                : ErrorLabels.codeName(error.getCode()));
        } else if ("ns not found".equals(e.getMessageWithoutErrorCode())) {
            // mongod 6.0 says NamespaceNotFound; drivers ignore exactly that code on drop()
            response.put("code", 26);
            response.put("codeName", "NamespaceNotFound");
        }
        return response;
    }

    static Document ok(Document response) {
        response.put("ok", 1.0);
        return response;
    }

    static boolean isOk(Document response) {
        Object ok = response.get("ok");
        return ok instanceof Number && ((Number) ok).doubleValue() == 1.0;
    }

    static boolean isTrue(Object value) {
        if (value instanceof Boolean) {
            return (Boolean) value;
        }
        if (value instanceof Number) {
            return ((Number) value).doubleValue() != 0;
        }
        return false;
    }

    // ------------------------------------------------------------------ commands

    /** Everything our dispatcher answers itself, and the fixes around what the library answers. */
    static final class Commands {

        /** Keys PyMongo adds to commands that the library does not know and need not see. */
        static final List<String> ENVELOPE = List.of(
            "lsid", "txnNumber", "$clusterTime", "$readPreference", "autocommit", "startTransaction",
            "apiVersion", "apiStrict", "apiDeprecationErrors");

        static final Set<String> WRITE_COMMANDS = Set.of("insert", "update", "delete", "findandmodify");

        static Document run(Server server, Handler handler, Request request) {
            String db = request.db;
            String command = request.command;
            String name = request.name;
            Document body = request.body;
            if (body.containsKey("startTransaction") || body.containsKey("autocommit")
                || name.equals("committransaction") || name.equals("aborttransaction")) {
                throw new MongoServerError(20, "IllegalOperation",
                    "multi-document transactions are not supported by the gatequeue embedded MongoDB"
                        + " server (mongo-java-server); gatequeue must not need them");
            }
            switch (name) {
                case "hello":
                case "ismaster":
                    return hello(server, request, command);
                case "getmore":
                    return getMore(server, handler, request, db, body);
                case "aggregate":
                    if (isChangeStream(body)) {
                        request.changeStream = true;
                        return server.changes.openStream(db, body);
                    }
                    break;
                case "endsessions":
                    server.sessions.end(body.get(command));
                    return ok(new Document());
                case "killallsessions":
                case "killallsessionsbypattern":
                    // mongod kills the cursors of every session, and PyMongo gives each cursor one
                    server.queryCursors.killAll();
                    server.changes.forgetAllCursors();
                    return ok(new Document());
                case "replsetgetstatus":
                    return replSetGetStatus(server);
                case "replsetinitiate":
                    throw new MongoServerError(23, "AlreadyInitialized", "already initialized");
                case "configurefailpoint":
                    return server.failPoints.configure(db, body);
                case "getparameter":
                    return ServerInfo.getParameter(db, body);
                case "buildinfo":
                    return ServerInfo.buildInfo();
                case "getcmdlineopts":
                    return ServerInfo.cmdLineOpts(server, db);
                case "gatequeuetrimchangelog":
                    return server.changes.trimCommand(db, body);
                default:
                    break;
            }

            Document clean = new Document(body);
            ENVELOPE.forEach(clean::remove);
            Object lsid = body.get("lsid");
            Object txnNumber = body.get("txnNumber");
            if (WRITE_COMMANDS.contains(name) && lsid instanceof Document && txnNumber instanceof Number) {
                Supplier<Document> write = () -> server.failPoints.transactionalWrite(request,
                    () -> execute(server, request, db, command, name, clean));
                return server.sessions.retryable(((Document) lsid).get("id"),
                    ((Number) txnNumber).longValue(), name, clean, write);
            }
            return execute(server, request, db, command, name, clean);
        }

        private static Document execute(Server server, Request request, String db, String command,
                                        String name, Document body) {
            Channel channel = request.ctx.channel();
            AbstractMongoBackend backend = server.backend;
            Variables vars = Variables.forCommand(server.changes, body.remove("let"));
            refuseCollation(body.get("collation"));
            switch (name) {
                case "find":
                    return server.queryCursors.find(server, channel, db, command, body, vars);
                case "aggregate":
                    return server.queryCursors.aggregate(server, channel, db, command, body, vars);
                case "count":
                case "distinct":
                    if (body.get("query") instanceof Document) {
                        body.put("query", vars.filter((Document) body.get("query")));
                    }
                    return backend.handleCommand(channel, db, command, body);
                case "insert": {
                    refuseDollarIds(body.get("documents"));
                    // MongoDB's default is ordered; the library's is unordered.
                    body.putIfAbsent("ordered", Boolean.TRUE);
                    Document response = backend.handleCommand(channel, db, command, body);
                    fixInsertCount(body, response);
                    return response;
                }
                case "update":
                    return update(server, channel, db, command, body, vars);
                case "delete":
                    body.put("deletes", withFilters(body.get("deletes"), vars));
                    return backend.handleCommand(channel, db, command, body);
                case "findandmodify":
                    return findAndModify(server, channel, db, command, body, vars);
                case "createindexes":
                    refusePartialUniqueIndexes(body);
                    if (body.get("indexes") instanceof List) {
                        for (Object index : (List<?>) body.get("indexes")) {
                            if (index instanceof Document) {
                                refuseCollation(((Document) index).get("collation"));
                            }
                        }
                    }
                    return backend.handleCommand(channel, db, command, body);
                case "create": {
                    Object images = body.remove("changeStreamPreAndPostImages");
                    boolean enabled = ChangeLog.imagesOption(images);
                    Document response = backend.handleCommand(channel, db, command, body);
                    if (isOk(response) && enabled) {
                        server.changes.setImages(db, (String) body.get(command), true);
                    }
                    return response;
                }
                case "collmod":
                    return server.changes.collMod(db, body);
                case "renamecollection": {
                    Document response = backend.handleCommand(channel, db, command, body);
                    if (isOk(response) && !Objects.equals(body.get(command), body.get("to"))) {
                        server.changes.recordRename(String.valueOf(body.get(command)), String.valueOf(body.get("to")));
                    }
                    return response;
                }
                case "dropdatabase": {
                    Document response = backend.handleCommand(channel, db, command, body);
                    server.changes.recordDropDatabase(db);
                    return response;
                }
                case "killcursors": {
                    Document response = backend.handleCommand(channel, db, command, body); // reports killed ids
                    Object ids = body.get("cursors");
                    if (ids instanceof List) {
                        for (Object id : (List<?>) ids) {
                            server.changes.forgetChangeStream(((Number) id).longValue());
                            server.queryCursors.forget(((Number) id).longValue());
                        }
                    }
                    return response;
                }
                default:
                    return backend.handleCommand(channel, db, command, body);
            }
        }

        /**
         * The library ignores collations (it compares strings by code point), so a query with one
         * would match other documents than on mongod: refused, as transactions are. The simple
         * collation is what the library does.
         */
        static void refuseCollation(Object collation) {
            if (collation == null) {
                return;
            }
            if (collation instanceof Document && ((Document) collation).size() == 1
                && "simple".equals(((Document) collation).get("locale"))) {
                return;
            }
            throw new MongoServerError(2, "BadValue", "collations other than {locale: 'simple'} are not"
                + " supported by the gatequeue embedded MongoDB server (mongo-java-server)");
        }

        /** mongod refuses an _id holding $-prefixed fields (they are not valid for storage). */
        private static void refuseDollarIds(Object documents) {
            if (!(documents instanceof List)) {
                return;
            }
            for (Object d : (List<?>) documents) {
                Object id = d instanceof Document ? ((Document) d).get("_id") : null;
                if (id instanceof Document) {
                    for (String key : ((Document) id).keySet()) {
                        if (key.startsWith("$")) {
                            throw new MongoServerError(52, "DollarPrefixedFieldName", "_id fields may not contain"
                                + " '$'-prefixed fields: " + key + " is not valid for storage.");
                        }
                    }
                }
            }
        }

        /** delete statements (and update's) with $$NOW and the command's let put into their $expr. */
        private static List<Document> withFilters(Object statements, Variables vars) {
            List<Document> out = new ArrayList<>();
            if (statements instanceof List) {
                for (Object o : (List<?>) statements) {
                    Document statement = new Document((Document) o);
                    refuseCollation(statement.get("collation"));
                    if (statement.get("q") instanceof Document) {
                        statement.put("q", vars.filter((Document) statement.get("q")));
                    }
                    out.add(statement);
                }
            }
            return out;
        }

        /**
         * One statement at a time: the library ignores {@code ordered} for updates, runs no
         * pipeline updates, and only per statement do we know whether a change is an update or a
         * replacement (the event types differ).
         */
        private static Document update(Server server, Channel channel, String db, String command,
                                       Document body, Variables vars) {
            @SuppressWarnings("unchecked")
            List<Document> statements = (List<Document>) body.get("updates");
            boolean ordered = !body.containsKey("ordered") || isTrue(body.get("ordered"));
            String collection = (String) body.get(command);
            for (Document statement : statements) {
                if (statement.containsKey("sort")) { // MongoDB 8.0 added it; 6.0 refuses it
                    throw new MongoServerError(40415, "Location40415",
                        "BSON field 'update.updates.sort' is an unknown field.");
                }
            }
            int n = 0;
            int nModified = 0;
            List<Document> upserted = new ArrayList<>();
            List<Document> writeErrors = new ArrayList<>();
            for (int i = 0; i < statements.size(); i++) {
                Document statement = new Document(statements.get(i));
                Object u = statement.get("u");
                Document response;
                try {
                    refuseCollation(statement.get("collation"));
                    Variables statementVars = vars.withConstants(statement.remove("c"), u instanceof List);
                    if (statement.get("q") instanceof Document) {
                        statement.put("q", statementVars.filter((Document) statement.get("q")));
                    }
                    if (u instanceof List) {
                        response = PipelineUpdates.update(server, db, collection, statement, statementVars);
                    } else {
                        if (u instanceof Document && !isReplacement((Document) u)) {
                            statement.put("u", CurrentDate.rewrite((Document) u, vars.now, server.changes));
                        }
                        Document single = new Document(body);
                        single.put("updates", List.of(statement));
                        ChangeLog.REPLACING.set(u instanceof Document && isReplacement((Document) u));
                        try {
                            response = server.backend.handleCommand(channel, db, command, single);
                        } finally {
                            ChangeLog.REPLACING.set(Boolean.FALSE);
                        }
                    }
                } catch (MongoServerError e) {
                    response = new Document("writeErrors", List.of(new Document("index", 0)
                        .append("code", e.getCode())
                        .append("codeName", e.getCodeName() != null ? e.getCodeName() : ErrorLabels.codeName(e.getCode()))
                        .append("errmsg", e.getMessageWithoutErrorCode())));
                }
                Object errors = response.get("writeErrors");
                if (errors instanceof List && !((List<?>) errors).isEmpty()) {
                    for (Object error : (List<?>) errors) {
                        Document e = new Document((Document) error);
                        e.put("index", i);
                        writeErrors.add(e);
                    }
                    if (ordered) {
                        break;
                    }
                    continue;
                }
                Object up = response.get("upserted");
                if (up instanceof List) {
                    for (Object o : (List<?>) up) {
                        Document d = new Document((Document) o);
                        d.put("index", i);
                        upserted.add(d);
                    }
                }
                n += ((Number) response.getOrDefault("n", 0)).intValue(); // matched + upserted
                nModified += ((Number) response.getOrDefault("nModified", 0)).intValue();
            }
            Document response = new Document("n", n).append("nModified", nModified);
            if (!upserted.isEmpty()) {
                response.put("upserted", upserted);
            }
            if (!writeErrors.isEmpty()) {
                response.put("writeErrors", writeErrors);
            }
            return ok(response);
        }

        private static Document findAndModify(Server server, Channel channel, String db, String command,
                                              Document body, Variables vars) {
            Object query = body.get("query");
            if (query instanceof Document) {
                body.put("query", vars.filter((Document) query));
            }
            Object update = body.get("update");
            if (update instanceof List) {
                return PipelineUpdates.findAndModify(server, db, (String) body.get(command), body, vars);
            }
            if (update instanceof Document && !isReplacement((Document) update)) {
                body.put("update", CurrentDate.rewrite((Document) update, vars.now, server.changes));
            }
            ChangeLog.REPLACING.set(update instanceof Document && isReplacement((Document) update));
            try {
                Document response = server.backend.handleCommand(channel, db, command, body);
                fixFindAndModify(body, response);
                return response;
            } finally {
                ChangeLog.REPLACING.set(Boolean.FALSE);
            }
        }

        /**
         * The library ignores partialFilterExpression, so a partial unique index would reject
         * documents mongod accepts (every document without the field collides on null). Refuse
         * it loudly rather than behave differently; a sparse unique index works.
         */
        private static void refusePartialUniqueIndexes(Document body) {
            Object indexes = body.get("indexes");
            if (!(indexes instanceof List)) {
                return;
            }
            for (Object index : (List<?>) indexes) {
                if (index instanceof Document && isTrue(((Document) index).get("unique"))
                    && ((Document) index).containsKey("partialFilterExpression")) {
                    throw new MongoServerError(67, "CannotCreateIndex", "unique indexes with a"
                        + " partialFilterExpression are not supported by the gatequeue embedded MongoDB"
                        + " server; use a sparse unique index");
                }
            }
        }

        static boolean isReplacement(Document update) {
            for (String key : update.keySet()) {
                if (key.startsWith("$")) {
                    return false;
                }
            }
            return true;
        }

        /** The library reports every document as inserted even when some failed. */
        private static void fixInsertCount(Document body, Document response) {
            Object errors = response.get("writeErrors");
            if (!(errors instanceof List) || ((List<?>) errors).isEmpty()) {
                return;
            }
            List<?> errorList = (List<?>) errors;
            int total = ((List<?>) body.get("documents")).size();
            if (isTrue(body.get("ordered"))) {
                response.put("n", ((Number) ((Document) errorList.get(0)).get("index")).intValue());
            } else {
                response.put("n", total - errorList.size());
            }
        }

        /** The library leaves out lastErrorObject after an upsert or a remove. */
        private static void fixFindAndModify(Document body, Document response) {
            if (!isOk(response) || response.containsKey("lastErrorObject")) {
                return;
            }
            Object value = response.get("value");
            Document leo = new Document();
            if (isTrue(body.get("remove"))) {
                leo.put("n", value != null ? 1 : 0);
            } else if (isTrue(body.get("upsert"))) {
                leo.put("n", 1);
                leo.put("updatedExisting", Boolean.FALSE);
                if (value instanceof Document && ((Document) value).containsKey("_id")) {
                    leo.put("upserted", ((Document) value).get("_id"));
                }
            } else {
                leo.put("n", 0);
                leo.put("updatedExisting", Boolean.FALSE);
            }
            response.put("lastErrorObject", leo);
        }

        static boolean isChangeStream(Document body) {
            Object pipeline = body.get("pipeline");
            if (!(pipeline instanceof List) || ((List<?>) pipeline).isEmpty()) {
                return false;
            }
            Object first = ((List<?>) pipeline).get(0);
            return first instanceof Document && ((Document) first).containsKey("$changeStream");
        }

        private static Document hello(Server server, Request request, String command) {
            Object client = request.body.get("client");
            if (client instanceof Document && ((Document) client).get("application") instanceof Document) {
                Object app = ((Document) ((Document) client).get("application")).get("name");
                if (app instanceof String) {
                    request.ctx.channel().attr(APP_NAME).set((String) app);
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
            response.put("connectionId", request.ctx.channel().attr(CONNECTION_ID).get());
            response.put("minWireVersion", 0);
            response.put("maxWireVersion", VERSION.getWireVersion());
            response.put("readOnly", Boolean.FALSE);
            // No topologyVersion: without it drivers poll hello every heartbeatFrequencyMS instead
            // of streaming it, which would need an awaitable hello.
            return ok(response);
        }

        private static Document replSetGetStatus(Server server) {
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

        private static Document getMore(Server server, Handler handler, Request request, String db,
                                        Document body) {
            long cursorId = ((Number) body.get("getMore")).longValue();
            Object size = body.get("batchSize");
            if (size instanceof Number && ((Number) size).longValue() <= 0) {
                throw new MongoServerError(2, "BadValue",
                    "Batch size for getMore must be positive, but received: " + size);
            }
            int batchSize = size instanceof Number ? ((Number) size).intValue() : 0;
            ChangeStreamCursor cursor = server.changes.cursor(cursorId);
            if (cursor != null) {
                request.changeStream = true;
                server.failPoints.getMoreAfterCursorCheckout(request, () -> server.changes.forgetChangeStream(cursorId));
                Object maxTime = body.get("maxTimeMS");
                long awaitMs = maxTime instanceof Number ? ((Number) maxTime).longValue() : DEFAULT_AWAIT_MS;
                long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, awaitMs));
                new AwaitingGetMore(server, handler, request, cursor, batchSize, deadline).attempt();
                return null;
            }
            QueryCursor query = server.queryCursors.get(cursorId);
            if (query != null) {
                server.failPoints.getMoreAfterCursorCheckout(request, () -> server.queryCursors.forget(cursorId));
                return server.queryCursors.getMore(query, db, (String) body.get("collection"), batchSize);
            }
            throw new MongoServerError(43, "CursorNotFound", "cursor id " + cursorId + " not found");
        }
    }

    /**
     * A change stream getMore that waits for events without holding a thread: it registers with
     * the change log and a timer on the channel's event loop, whichever fires first answers.
     */
    static final class AwaitingGetMore implements Runnable {
        final Server server;
        final Handler handler;
        final Request request;
        final ChangeStreamCursor cursor;
        final int batchSize;
        final long deadline;
        ScheduledFuture<?> timer;
        AtomicBoolean fired;

        AwaitingGetMore(Server server, Handler handler, Request request, ChangeStreamCursor cursor,
                        int batchSize, long deadline) {
            this.server = server;
            this.handler = handler;
            this.request = request;
            this.cursor = cursor;
            this.batchSize = batchSize;
            this.deadline = deadline;
        }

        /** Called by the change log (any thread) or the timer (the event loop). */
        @Override
        public void run() {
            AtomicBoolean f = fired;
            if (f != null && f.compareAndSet(false, true)) {
                request.ctx.executor().execute(this::attempt);
            }
        }

        void attempt() {
            if (timer != null) {
                timer.cancel(false);
                timer = null;
            }
            if (!request.ctx.channel().isActive()) {
                cursor.waiting = false;
                server.changes.removeWaiter(this);
                return;
            }
            Document response;
            try {
                if (server.changes.cursor(cursor.getId()) != cursor) {
                    throw new MongoServerError(237, "CursorKilled",
                        "cursor id " + cursor.getId() + " was killed");
                }
                long seen = server.changes.clusterTime();
                ChangeStreamCursor.Batch batch = cursor.take(batchSize);
                if (batch.events.isEmpty() && !batch.closed && System.nanoTime() < deadline) {
                    fired = new AtomicBoolean();
                    cursor.waiting = true;
                    if (server.changes.awaitAfter(seen, this)) {
                        long remaining = deadline - System.nanoTime();
                        timer = request.ctx.executor().schedule(this, remaining, TimeUnit.NANOSECONDS);
                        return;
                    }
                    fired.set(true);
                    request.ctx.executor().execute(this::attempt); // something arrived meanwhile
                    return;
                }
                response = cursor.response("nextBatch", batch);
                if (batch.closed) {
                    server.changes.forgetChangeStream(cursor.getId());
                }
            } catch (MongoServerException e) {
                server.changes.forgetChangeStream(cursor.getId());
                response = errorResponse(e);
            } catch (RuntimeException e) {
                log.error("getMore on change stream failed", e);
                server.changes.forgetChangeStream(cursor.getId());
                response = errorResponse(new MongoServerError(1, "InternalError", e.toString()));
            }
            cursor.waiting = false;
            cursor.touch();
            server.changes.removeWaiter(this);
            handler.reply(request, response);
        }
    }

    // ------------------------------------------------------------------ bounded replies

    /**
     * mongod's batch rules. A batch holds at most 16 MiB of documents (BSONObjMaxUserSize; the
     * reply around it may be a little larger, as mongod's are) and always at least one document,
     * so a single large document still goes through. The library ignores batchSize for aggregate
     * and, without one, puts a find's whole result into one reply: a 78 MB reply that PyMongo
     * refuses ("Message length ... > max 48000000").
     */
    static final class Batches {
        static final int MAX_BYTES = 16 * 1024 * 1024;
        /** The first batch of find and aggregate when the client names no batchSize. */
        static final int DEFAULT_FIRST = 101;

        private Batches() {
        }

        static int size(Document d) {
            ByteBuf buf = Unpooled.buffer();
            try {
                BsonEncoder.encodeDocument(d, buf);
                return buf.readableBytes();
            } finally {
                buf.release();
            }
        }

        /** firstBatch's batchSize: -1 when absent; negative values are refused as mongod does. */
        static int firstBatchSize(Object value, String field) {
            if (value == null) {
                return -1;
            }
            if (!(value instanceof Number)) {
                throw new MongoServerError(14, "TypeMismatch",
                    "BSON field '" + field + "' is the wrong type '" + Utils.describeType(value)
                        + "', expected types '[long, int, decimal, double]'");
            }
            long n = ((Number) value).longValue();
            if (n < 0) {
                throw new MongoServerError(51024, "Location51024",
                    "BSON field '" + field + "' value must be >= 0, actual value '" + n + "'");
            }
            return (int) Math.min(n, Integer.MAX_VALUE);
        }
    }

    /** The rest of a find or aggregate result, handed out batch by batch. */
    static final class QueryCursor extends AbstractCursor {
        final String ns;
        private final List<Document> documents;
        private int next;
        volatile long lastUsed = System.currentTimeMillis();

        QueryCursor(long id, String ns, List<Document> documents) {
            super(id);
            this.ns = ns;
            this.documents = documents;
        }

        @Override
        public synchronized boolean isEmpty() {
            return next >= documents.size();
        }

        /** Up to {@code limit} documents (0: no count limit) and {@link Batches#MAX_BYTES}. */
        @Override
        public synchronized List<Document> takeDocuments(int limit) {
            lastUsed = System.currentTimeMillis();
            List<Document> batch = new ArrayList<>();
            long bytes = 0;
            while (next < documents.size() && (limit <= 0 || batch.size() < limit)) {
                Document d = documents.get(next);
                int size = Batches.size(d);
                if (!batch.isEmpty() && bytes + size > Batches.MAX_BYTES) {
                    break;
                }
                batch.add(d);
                bytes += size;
                documents.set(next++, null); // handed out: let it go
            }
            return batch;
        }
    }

    /**
     * Our cursors for find and aggregate: the library computes the whole result (it has no
     * streaming query engine), we hand it out in mongod's batches. Registered with the library's
     * cursor registry as well, so that its killCursors finds them.
     */
    static final class QueryCursors {
        private final Map<Long, QueryCursor> cursors = new ConcurrentHashMap<>();
        private BackendAccess backend;

        void attach(BackendAccess backend) {
            this.backend = backend;
        }

        Document find(Server server, Channel channel, String db, String command, Document body, Variables vars) {
            int batchSize = Batches.firstBatchSize(body.remove("batchSize"), "batchSize");
            boolean singleBatch = isTrue(body.remove("singleBatch"));
            if (body.get("filter") instanceof Document) {
                body.put("filter", vars.filter((Document) body.get("filter")));
            }
            Document response = server.backend.handleCommand(channel, db, command, body);
            return firstBatch(response, batchSize, singleBatch);
        }

        Document aggregate(Server server, Channel channel, String db, String command, Document body, Variables vars) {
            if (isTrue(body.get("explain"))) {
                return server.backend.handleCommand(channel, db, command, body);
            }
            Object cursorOptions = body.get("cursor");
            if (!(cursorOptions instanceof Document)) {
                throw new MongoServerError(9, "FailedToParse",
                    "The 'cursor' option is required, except for aggregate with the explain argument");
            }
            Document options = new Document((Document) cursorOptions);
            int batchSize = Batches.firstBatchSize(options.remove("batchSize"), "batchSize");
            Object readConcern = body.get("readConcern");
            if (readConcern instanceof Document && "linearizable".equals(((Document) readConcern).get("level"))
                && writesOut(body.get("pipeline"))) {
                throw new MongoServerError(72, "InvalidOptions",
                    "readConcern level 'linearizable' is not supported for $out or $merge");
            }
            body.put("cursor", options);
            body.put("pipeline", Pipelines.prepare(Aggregation.parse(body.get("pipeline")), vars));
            Document response = server.backend.handleCommand(channel, db, command, body);
            return firstBatch(response, batchSize, false);
        }

        private static boolean writesOut(Object pipeline) {
            if (!(pipeline instanceof List) || ((List<?>) pipeline).isEmpty()) {
                return false;
            }
            Object last = ((List<?>) pipeline).get(((List<?>) pipeline).size() - 1);
            return last instanceof Document && (((Document) last).containsKey("$out") || ((Document) last).containsKey("$merge"));
        }

        /** The library's one-reply result, cut to the first batch; the rest waits in a cursor. */
        private Document firstBatch(Document response, int batchSize, boolean singleBatch) {
            Document cursor = (Document) response.get("cursor");
            if (cursor == null || !(cursor.get("firstBatch") instanceof List)) {
                return response;
            }
            @SuppressWarnings("unchecked")
            List<Document> all = new ArrayList<>((List<Document>) cursor.get("firstBatch"));
            String ns = (String) cursor.get("ns");
            QueryCursor rest = new QueryCursor(backend.cursors().generateCursorId(), ns, all);
            List<Document> first = batchSize == 0 ? List.of()
                : rest.takeDocuments(batchSize < 0 ? Batches.DEFAULT_FIRST : batchSize);
            long id = 0;
            if (!singleBatch && !rest.isEmpty()) {
                cursors.put(rest.getId(), rest);
                backend.cursors().add(rest);
                id = rest.getId();
            }
            Document out = new Document("firstBatch", first).append("id", id).append("ns", ns);
            response.put("cursor", out);
            return response;
        }

        QueryCursor get(long id) {
            return cursors.get(id);
        }

        Document getMore(QueryCursor cursor, String db, String collection, int batchSize) {
            String ns = db + "." + collection;
            if (!ns.equals(cursor.ns)) {
                throw new MongoServerError(13, "Unauthorized", "Requested getMore on namespace '" + ns
                    + "', but cursor belongs to a different namespace " + cursor.ns);
            }
            List<Document> batch = cursor.takeDocuments(batchSize);
            long id = cursor.getId();
            if (cursor.isEmpty()) {
                forget(id);
                id = 0;
            }
            return ok(new Document("cursor", new Document("nextBatch", batch).append("id", id)
                .append("ns", cursor.ns)));
        }

        void forget(long id) {
            if (cursors.remove(id) != null) {
                backend.cursors().remove(id);
            }
        }

        void killAll() {
            for (Long id : new ArrayList<>(cursors.keySet())) {
                forget(id);
            }
        }

        /** mongod closes cursors idle for 10 minutes (cursorTimeoutMillis). */
        void reapIdle() {
            long now = System.currentTimeMillis();
            for (QueryCursor c : cursors.values()) {
                if (now - c.lastUsed > CURSOR_IDLE_TIMEOUT_MS) {
                    forget(c.getId());
                }
            }
        }
    }

    // ------------------------------------------------------------------ the server's clock in expressions

    /**
     * The variables of one command: {@code $$NOW} and {@code $$CLUSTER_TIME}, one value each per
     * command as on mongod, from the server's clock (so leases can expire by the server's time,
     * not the clients'), and the user's {@code let} (and an update statement's {@code c}).
     *
     * <p>The library evaluates {@code $$NOW} as {@code Instant.now()} at every use: two documents
     * of one update_many see different times, and the nanoseconds a BSON date cannot hold make a
     * stored value differ from what a client reads back. So we put the values into the command's
     * expressions before the library sees them, as {@code {$literal: value}} (a value is never
     * read again as an expression), and only where mongod evaluates expressions: inside
     * {@code $expr} in filters, and in pipeline stages other than a {@code $match}'s plain
     * conditions.
     */
    static final class Variables {
        /** No substitution: change stream stages, where $$NOW is each event's (the library's). */
        static final Variables NONE = new Variables(null, Map.of());

        final Instant now;
        private final Map<String, Object> values;

        private Variables(Instant now, Map<String, Object> values) {
            this.now = now;
            this.values = values;
        }

        static Variables forCommand(ChangeLog clock, Object let) {
            Instant now = Instant.ofEpochMilli(System.currentTimeMillis()); // BSON dates hold milliseconds
            Map<String, Object> values = new LinkedHashMap<>();
            values.put("NOW", now);
            values.put("CLUSTER_TIME", new BsonTimestamp(clock.clusterTime()));
            return new Variables(now, values).withUserVariables(let, "let");
        }

        /** An update statement's constants {@code c}: allowed with pipeline updates only. */
        Variables withConstants(Object constants, boolean pipeline) {
            if (constants == null) {
                return this;
            }
            if (!pipeline) {
                throw new MongoServerError(51198, "Location51198",
                    "Constant values may only be specified for pipeline updates");
            }
            return withUserVariables(constants, "c");
        }

        private Variables withUserVariables(Object let, String field) {
            if (let == null) {
                return this;
            }
            if (!(let instanceof Document)) {
                throw new MongoServerError(14, "TypeMismatch", "BSON field '" + field
                    + "' is the wrong type '" + Utils.describeType(let) + "', expected type 'object'");
            }
            Map<String, Object> merged = new LinkedHashMap<>(values);
            Variables scope = new Variables(now, merged);
            for (Map.Entry<String, Object> e : ((Document) let).entrySet()) {
                validateName(e.getKey());
                // let values are expressions themselves, evaluated once (they may use $$NOW)
                Object value = Expression.evaluateDocument(scope.expression(e.getValue()), new Document());
                merged.put(e.getKey(), value);
            }
            return scope;
        }

        /** mongod's rule for user variable names: a lower-case letter first, then letters, digits, _. */
        private static void validateName(String name) {
            if (name.isEmpty()) {
                throw new MongoServerError(16869, "Location16869", "empty variable names are not allowed");
            }
            char first = name.charAt(0);
            if (!(Character.isLowerCase(first) || first > 127)) {
                throw new MongoServerError(16870, "Location16870",
                    "'" + name + "' starts with an invalid character for a user variable name");
            }
            for (char c : name.toCharArray()) {
                if (!(Character.isLetterOrDigit(c) || c == '_' || c > 127)) {
                    throw new MongoServerError(16871, "Location16871",
                        "'" + name + "' contains an invalid character for a variable name: '" + c + "'");
                }
            }
        }

        /** A query filter: only what is inside $expr is an expression. */
        Document filter(Document filter) {
            Document out = new Document();
            for (Map.Entry<String, Object> e : filter.entrySet()) {
                String key = e.getKey();
                Object value = e.getValue();
                if (key.equals("$expr")) {
                    out.put(key, expression(value));
                } else if ((key.equals("$and") || key.equals("$or") || key.equals("$nor")) && value instanceof List) {
                    List<Object> parts = new ArrayList<>();
                    for (Object part : (List<?>) value) {
                        parts.add(part instanceof Document ? filter((Document) part) : part);
                    }
                    out.put(key, parts);
                } else {
                    out.put(key, value);
                }
            }
            return out;
        }

        /** An aggregation expression, with our variables put in as literals. */
        Object expression(Object expression) {
            return expression(expression, false);
        }

        /**
         * {@code structural}: the value of an operator (its argument list, or the document of
         * its named arguments), where a list is syntax, not an array.
         * Anywhere else a list is an array literal, whose elements mongod evaluates as
         * expressions: {@code [{at: "$$NOW", id: "$_id"}]} holds a date and the id. The
         * library returns array literals as they are, unevaluated, so one that holds an
         * expression becomes an expression that evaluates each element (see arrayOf).
         */
        private Object expression(Object expression, boolean structural) {
            if (expression instanceof String) {
                return variable((String) expression);
            }
            if (expression instanceof Document) {
                Document d = (Document) expression;
                if (d.size() == 1 && d.containsKey("$literal")) {
                    return d;
                }
                boolean operator = d.size() == 1 && d.keySet().iterator().next().startsWith("$");
                Document out = new Document();
                for (Map.Entry<String, Object> e : d.entrySet()) {
                    // an operator's value is its arguments; of named arguments, only a few
                    // are lists by syntax ($switch's branches, $zip's inputs and defaults)
                    boolean syntax = operator || (structural && LIST_ARGUMENTS.contains(e.getKey()));
                    out.put(e.getKey(), expression(e.getValue(), syntax));
                }
                return out;
            }
            if (expression instanceof List) {
                List<Object> out = new ArrayList<>();
                boolean evaluated = false;
                for (Object o : (List<?>) expression) {
                    Object element = expression(o, false);
                    evaluated |= needsEvaluation(element);
                    out.add(element);
                }
                return structural || !evaluated ? out : arrayOf(out);
            }
            return expression;
        }

        private static final Set<String> LIST_ARGUMENTS = Set.of("branches", "inputs", "defaults");

        private static boolean needsEvaluation(Object element) {
            return element instanceof Document
                || (element instanceof String && ((String) element).startsWith("$"));
        }

        /**
         * An array literal as an expression the library evaluates element by element:
         * {@code $objectToArray} of a document whose values are the elements (the library
         * evaluates a document's values), mapped back to the values. One difference from
         * mongod remains: an element that evaluates to a missing field is left out, where
         * mongod puts null.
         */
        private static Document arrayOf(List<Object> elements) {
            Document byIndex = new Document();
            for (int i = 0; i < elements.size(); i++) {
                byIndex.put(Integer.toString(i), elements.get(i));
            }
            return new Document("$map", new Document("input", new Document("$objectToArray", byIndex))
                .append("as", "gatequeueElement")
                .append("in", "$$gatequeueElement.v"));
        }

        private Object variable(String reference) {
            if (!reference.startsWith("$$")) {
                return reference;
            }
            String name = reference.substring(2);
            String path = null;
            int dot = name.indexOf('.');
            if (dot >= 0) {
                path = name.substring(dot + 1);
                name = name.substring(0, dot);
            }
            if (!values.containsKey(name)) {
                return reference; // $$ROOT, $$CURRENT, $$this, ...: the library's
            }
            Object value = values.get(name);
            if (path != null) {
                value = value instanceof Document ? Utils.getSubdocumentValue((Document) value, path) : null;
                if (value instanceof Missing) {
                    value = null;
                }
            }
            return new Document("$literal", value);
        }
    }

    /** Aggregation pipelines as the library can run them. */
    static final class Pipelines {
        private Pipelines() {
        }

        /**
         * Stage aliases the library lacks ($set is $addFields and $replaceWith is $replaceRoot
         * since MongoDB 4.2), and the command's variables put into the stages' expressions.
         */
        static List<Document> prepare(List<Document> pipeline, Variables vars) {
            List<Document> out = new ArrayList<>();
            for (Document stage : pipeline) {
                if (stage.size() != 1) {
                    throw new MongoServerError(40323, "Location40323",
                        "A pipeline stage specification object must contain exactly one field.");
                }
                String name = stage.keySet().iterator().next();
                Object spec = stage.get(name);
                switch (name) {
                    case "$set":
                    case "$addFields":
                        out.addAll(addFields(vars.expression(spec)));
                        break;
                    case "$replaceWith":
                        out.add(new Document("$replaceRoot", new Document("newRoot", vars.expression(spec))));
                        break;
                    case "$match":
                        out.add(new Document(name, spec instanceof Document ? vars.filter((Document) spec) : spec));
                        break;
                    case "$lookup":
                    case "$unionWith": {
                        if (!(spec instanceof Document)) {
                            out.add(stage);
                            break;
                        }
                        Document d = new Document((Document) spec);
                        if (d.get("let") != null) {
                            d.put("let", vars.expression(d.get("let")));
                        }
                        if (d.get("pipeline") instanceof List) {
                            d.put("pipeline", prepare(Aggregation.parse(d.get("pipeline")), vars));
                        }
                        out.add(new Document(name, d));
                        break;
                    }
                    case "$facet": {
                        Document facets = new Document();
                        for (Map.Entry<String, Object> e : ((Document) spec).entrySet()) {
                            facets.put(e.getKey(), e.getValue() instanceof List
                                ? prepare(Aggregation.parse(e.getValue()), vars) : e.getValue());
                        }
                        out.add(new Document(name, facets));
                        break;
                    }
                    case "$project":
                        out.add(new Document(name, nestComputedPaths(vars.expression(spec))));
                        break;
                    default:
                        out.add(new Document(name, vars.expression(spec)));
                        break;
                }
            }
            return out;
        }

        /**
         * $addFields / $set as mongod runs them: every expression sees the stage's input document.
         * The library evaluates each field against the document it is building, so
         * {@code {$set: {lease: <new>, late: {$gt: ["$$NOW", "$lease"]}}}} would compare with the
         * new lease; and it would create a field literally named "a.b" for a dotted path. So a
         * stage of several fields becomes: each value into a temporary field (each stage sees the
         * input's fields), then all copied into place (dotted paths nested), then the temporaries
         * unset.
         */
        private static List<Document> addFields(Object spec) {
            if (!(spec instanceof Document)) {
                return List.of(new Document("$addFields", spec));
            }
            Document fields = (Document) spec;
            boolean dotted = fields.keySet().stream().anyMatch(k -> k.contains("."));
            if (fields.size() <= 1 && !dotted) {
                return List.of(new Document("$addFields", fields));
            }
            List<Document> stages = new ArrayList<>();
            Document copy = new Document();
            List<String> temporaries = new ArrayList<>();
            int i = 0;
            for (Map.Entry<String, Object> e : fields.entrySet()) {
                String temporary = "__gatequeue_addFields_" + i++;
                temporaries.add(temporary);
                stages.add(new Document("$addFields", new Document(temporary, e.getValue())));
                Document at = copy;
                String[] parts = e.getKey().split("\\.");
                for (int p = 0; p < parts.length - 1; p++) {
                    Object next = at.get(parts[p]);
                    if (!(next instanceof Document)) {
                        next = new Document();
                        at.put(parts[p], next);
                    }
                    at = (Document) next;
                }
                at.put(parts[parts.length - 1], "$" + temporary);
            }
            stages.add(new Document("$addFields", copy));
            stages.add(new Document("$unset", temporaries));
            return stages;
        }

        /**
         * {@code {$project: {"a.b": <expression>}}} computes a.b inside a, as on mongod; the
         * library would create a field literally named "a.b". Written as {@code {a: {b: ...}}},
         * which it computes right, when every key under {@code a} is computed (inclusions stay).
         */
        private static Object nestComputedPaths(Object spec) {
            if (!(spec instanceof Document)) {
                return spec;
            }
            Document in = (Document) spec;
            Set<String> mixed = new java.util.HashSet<>();
            for (Map.Entry<String, Object> e : in.entrySet()) {
                String head = e.getKey().split("\\.", 2)[0];
                if (isInclusion(e.getValue()) || !e.getKey().contains(".")) {
                    mixed.add(head);
                }
            }
            Document out = new Document();
            for (Map.Entry<String, Object> e : in.entrySet()) {
                String key = e.getKey();
                String head = key.split("\\.", 2)[0];
                if (!key.contains(".") || key.startsWith("$") || mixed.contains(head)) {
                    out.put(key, e.getValue());
                    continue;
                }
                Document at = out;
                String[] parts = key.split("\\.");
                for (int i = 0; i < parts.length - 1; i++) {
                    Object next = at.get(parts[i]);
                    if (!(next instanceof Document)) {
                        next = new Document();
                        at.put(parts[i], next);
                    }
                    at = (Document) next;
                }
                at.put(parts[parts.length - 1], e.getValue());
            }
            return out;
        }

        private static boolean isInclusion(Object value) {
            return value instanceof Number || value instanceof Boolean;
        }
    }

    /**
     * {@code $currentDate} by the same clock as {@code $$NOW}: the library takes
     * {@code Instant.now()} (nanoseconds a BSON date cannot hold, so a stored value differs from
     * what a client reads back) and a timestamp with increment 0, where mongod reserves a tick of
     * the cluster clock. We turn it into a {@code $set} of those values.
     */
    static final class CurrentDate {
        private CurrentDate() {
        }

        static Document rewrite(Document update, Instant now, ChangeLog clock) {
            Object spec = update.get("$currentDate");
            if (spec == null) {
                return update;
            }
            if (!(spec instanceof Document)) {
                throw new MongoServerError(9, "FailedToParse", "Modifiers operate on fields but we found type "
                    + Utils.describeType(spec) + " instead. For example: {$mod: {<field>: ...}} not {$currentDate: "
                    + spec + "}");
            }
            Document values = new Document();
            for (Map.Entry<String, Object> e : ((Document) spec).entrySet()) {
                values.put(e.getKey(), isDate(e.getValue()) ? now : new BsonTimestamp(clock.reserveTick()));
            }
            Document out = new Document();
            Object set = update.get("$set");
            Document merged = set instanceof Document ? new Document((Document) set) : new Document();
            for (Map.Entry<String, Object> e : values.entrySet()) {
                for (String other : merged.keySet()) {
                    if (Utils.getShorterPathIfPrefix(e.getKey(), other) != null) {
                        throw new MongoServerError(40, "ConflictingUpdateOperators", "Updating the path '"
                            + e.getKey() + "' would create a conflict at '" + Utils.getShorterPathIfPrefix(e.getKey(), other) + "'");
                    }
                }
            }
            merged.putAll(values);
            for (Map.Entry<String, Object> e : update.entrySet()) {
                if (e.getKey().equals("$currentDate")) {
                    if (!update.containsKey("$set")) {
                        out.put("$set", merged);
                    }
                } else if (e.getKey().equals("$set")) {
                    out.put("$set", merged);
                } else {
                    out.put(e.getKey(), e.getValue());
                }
            }
            return out;
        }

        /** mongod's rules: a boolean means a date; otherwise exactly {$type: 'date' | 'timestamp'}. */
        private static boolean isDate(Object spec) {
            if (spec instanceof Boolean) {
                return true;
            }
            if (spec instanceof Document) {
                Document d = (Document) spec;
                boolean found = false;
                boolean date = true;
                for (Map.Entry<String, Object> e : d.entrySet()) {
                    if (!e.getKey().equals("$type")) {
                        throw new MongoServerError(2, "BadValue", "Unrecognized $currentDate option: " + e.getKey());
                    }
                    if ("date".equals(e.getValue())) {
                        found = true;
                        date = true;
                    } else if ("timestamp".equals(e.getValue())) {
                        found = true;
                        date = false;
                    }
                }
                if (!found) {
                    throw new MongoServerError(2, "BadValue", "The '$type' string field is required to be 'date' or"
                        + " 'timestamp': {$currentDate: {field : {$type: 'date'}}}");
                }
                return date;
            }
            throw new MongoServerError(2, "BadValue", Utils.describeType(spec) + " is not valid type for $currentDate."
                + " Please use a boolean ('true') or a $type expression ({$type: 'timestamp/date'}).");
        }
    }

    // ------------------------------------------------------------------ pipeline updates

    /**
     * Updates given as an aggregation pipeline (MongoDB 4.2+), which the library does not run:
     * {@code update} and {@code findAndModify} with a list of $addFields/$set, $project, $unset,
     * $replaceRoot/$replaceWith stages. Each matched document runs through the stages (with
     * $$NOW and the command's variables), and the result replaces it under the collection's lock,
     * so the read, the match and the write are one step, as a claim needs. Change streams see an
     * {@code update} event (mongod logs pipeline updates as updates, not replacements).
     */
    static final class PipelineUpdates {
        private static final Set<String> STAGES = Set.of("$addFields", "$set", "$project", "$unset",
            "$replaceRoot", "$replaceWith");

        private PipelineUpdates() {
        }

        static Document update(Server server, String db, String collectionName, Document statement, Variables vars) {
            if (statement.containsKey("arrayFilters")) {
                throw new MongoServerError(72, "InvalidOptions",
                    "arrayFilters may not be specified for pipeline-style updates");
            }
            Document query = statement.get("q") instanceof Document ? (Document) statement.get("q") : new Document();
            boolean multi = isTrue(statement.get("multi"));
            boolean upsert = isTrue(statement.get("upsert"));
            MongoDatabase database = server.access.database(db);
            Aggregation stages = stages(server, database, statement.get("u"), vars);
            MongoCollection<?> collection = upsert ? collection(database, collectionName)
                : database.resolveCollection(collectionName, false);
            if (collection == null) {
                return new Document("n", 0).append("nModified", 0);
            }
            synchronized (collection) {
                int matched = 0;
                int modified = 0;
                for (Document document : collection.handleQuery(new Document("query", query), 0, multi ? 0 : 1)) {
                    matched++;
                    if (replace(collection, document, stages)) {
                        modified++;
                    }
                }
                if (matched == 0 && upsert) {
                    Document inserted = insert(collection, query, stages);
                    return new Document("n", 1).append("nModified", 0)
                        .append("upserted", List.of(new Document("index", 0).append("_id", inserted.get("_id"))));
                }
                return new Document("n", matched).append("nModified", modified);
            }
        }

        static Document findAndModify(Server server, String db, String collectionName, Document body, Variables vars) {
            if (isTrue(body.get("remove"))) {
                throw new MongoServerError(9, "FailedToParse", "Cannot specify both an update and remove=true");
            }
            if (body.containsKey("arrayFilters")) {
                throw new MongoServerError(72, "InvalidOptions",
                    "arrayFilters may not be specified for pipeline-style updates");
            }
            Document query = body.get("query") instanceof Document ? (Document) body.get("query") : new Document();
            boolean upsert = isTrue(body.get("upsert"));
            boolean returnNew = isTrue(body.get("new"));
            MongoDatabase database = server.access.database(db);
            Aggregation stages = stages(server, database, body.get("update"), vars);
            MongoCollection<?> collection = upsert ? collection(database, collectionName)
                : database.resolveCollection(collectionName, false);
            Document value = null;
            Document lastError = new Document("n", 0).append("updatedExisting", Boolean.FALSE);
            if (collection != null) {
                synchronized (collection) {
                    Document select = new Document("query", query);
                    if (body.get("sort") instanceof Document) {
                        select.put("orderby", body.get("sort"));
                    }
                    Document found = null;
                    for (Document d : collection.handleQuery(select, 0, 1)) {
                        found = d;
                    }
                    if (found != null) {
                        Document before = found.cloneDeeply();
                        replace(collection, found, stages);
                        value = returnNew ? byId(collection, before.get("_id")) : before;
                        lastError = new Document("n", 1).append("updatedExisting", Boolean.TRUE);
                    } else if (upsert) {
                        Document inserted = insert(collection, query, stages);
                        value = returnNew ? inserted.cloneDeeply() : null;
                        lastError = new Document("n", 1).append("updatedExisting", Boolean.FALSE)
                            .append("upserted", inserted.get("_id"));
                    }
                }
            }
            if (value != null && body.get("fields") instanceof Document && !((Document) body.get("fields")).isEmpty()) {
                value = LibraryInternals.project(value, (Document) body.get("fields"));
            }
            return ok(new Document("lastErrorObject", lastError).append("value", value));
        }

        private static Aggregation stages(Server server, MongoDatabase database, Object pipeline, Variables vars) {
            List<Document> stages = Aggregation.parse(pipeline);
            for (Document stage : stages) {
                String name = stage.keySet().iterator().next();
                if (!STAGES.contains(name)) {
                    throw new MongoServerError(72, "InvalidOptions",
                        name + " is not allowed to be used within an update");
                }
            }
            return Aggregation.fromPipeline(Pipelines.prepare(stages, vars), server.access::database, database,
                null, server.changes);
        }

        private static MongoCollection<?> collection(MongoDatabase database, String name) {
            MongoCollection<?> collection = database.resolveCollection(name, false);
            if (collection != null) {
                return collection;
            }
            try {
                return database.createCollectionOrThrowIfExists(name);
            } catch (MongoServerException e) {
                return database.resolveCollection(name, true); // created meanwhile by another command
            }
        }

        /**
         * The pipeline's output for one document. An existing document keeps its _id (a pipeline
         * that drops it gets it back; one that changes it fails with ImmutableField); a new one
         * gets an ObjectId first when neither the query nor the pipeline gave it one.
         */
        private static Document transform(Aggregation stages, Document document) {
            List<Document> out = stages.runStages(Stream.of(document.cloneDeeply()));
            if (out.size() != 1) {
                throw new MongoServerError(1, "InternalError", "an update pipeline produced " + out.size() + " documents");
            }
            Document result = out.get(0);
            boolean existing = document.containsKey("_id");
            Object id = existing ? document.get("_id") : new ObjectId();
            if (!result.containsKey("_id")) {
                Document withId = new Document("_id", id);
                withId.putAll(result);
                return withId;
            }
            if (existing && !Objects.equals(result.get("_id"), id)) {
                throw new MongoServerError(66, "ImmutableField",
                    "Performing an update on the path '_id' would modify the immutable field '_id'");
            }
            return result;
        }

        /** True when the document changed. The write goes through the library (indexes, hooks). */
        private static boolean replace(MongoCollection<?> collection, Document document, Aggregation stages) {
            Document result = transform(stages, document);
            if (result.equals(document)) {
                return false;
            }
            Document replacement = new Document(result);
            replacement.remove("_id");
            ChangeLog.REPLACING.set(Boolean.FALSE);
            ChangeLog.PIPELINE_UPDATE.set(Boolean.TRUE);
            try {
                collection.updateDocuments(new Document("_id", document.get("_id")), replacement,
                    ArrayFilters.empty(), false, false, changeLog);
            } finally {
                ChangeLog.PIPELINE_UPDATE.set(Boolean.FALSE);
            }
            return true;
        }

        /** An upsert: the query's equality fields (as the library's upserts), then the pipeline. */
        private static Document insert(MongoCollection<?> collection, Document query, Aggregation stages) {
            Document seed = LibraryInternals.upsertSeed(collection, query);
            Document base = new Document();
            if (seed.containsKey("_id")) {
                base.put("_id", seed.remove("_id")); // _id first, as mongod stores it
            }
            base.putAll(seed);
            Document result = transform(stages, base);
            collection.addDocument(result);
            return result;
        }

        private static Document byId(MongoCollection<?> collection, Object id) {
            for (Document d : collection.handleQuery(new Document("query", new Document("_id", id)), 0, 1)) {
                return d.cloneDeeply();
            }
            return null;
        }
    }

    /**
     * Two package-private helpers of the library that a pipeline findAndModify and upsert need to
     * behave exactly like its classic ones: the find projection of findAndModify's {@code fields},
     * and the document an upsert starts from (the query's equality conditions). Reflection keeps
     * the launcher one file; both are looked up once at start, so a library upgrade that renames
     * them fails at once, not at the first pipeline upsert.
     */
    static final class LibraryInternals {
        private static final java.lang.reflect.Constructor<?> PROJECTION;
        private static final java.lang.reflect.Method PROJECT;
        private static final java.lang.reflect.Method SEED;

        static {
            try {
                Class<?> projection = Class.forName("de.bwaldvogel.mongo.backend.Projection");
                PROJECTION = projection.getDeclaredConstructor(Document.class, String.class);
                PROJECTION.setAccessible(true);
                PROJECT = projection.getDeclaredMethod("projectDocument", Document.class);
                PROJECT.setAccessible(true);
                SEED = de.bwaldvogel.mongo.backend.AbstractMongoCollection.class
                    .getDeclaredMethod("convertSelectorToDocument", Document.class);
                SEED.setAccessible(true);
            } catch (ReflectiveOperationException e) {
                throw new ExceptionInInitializerError(e);
            }
        }

        private LibraryInternals() {
        }

        static Document project(Document document, Document fields) {
            try {
                return (Document) PROJECT.invoke(PROJECTION.newInstance(fields, "_id"), document);
            } catch (java.lang.reflect.InvocationTargetException e) {
                throw rethrow(e);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException(e);
            }
        }

        static Document upsertSeed(MongoCollection<?> collection, Document query) {
            try {
                return (Document) SEED.invoke(collection, query);
            } catch (java.lang.reflect.InvocationTargetException e) {
                throw rethrow(e);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException(e);
            }
        }

        private static RuntimeException rethrow(java.lang.reflect.InvocationTargetException e) {
            if (e.getCause() instanceof RuntimeException) {
                return (RuntimeException) e.getCause();
            }
            return new IllegalStateException(e.getCause());
        }
    }

    // ------------------------------------------------------------------ fail points and error labels

    /**
     * mongod's test fail points that drivers' test suites and our own fault tests use, enabled
     * like mongod's with {@code enableTestCommands} (always on here: a development server).
     *
     * <ul>
     * <li>{@code failCommand}: before a listed command runs, block the connection for
     * {@code blockTimeMS}, close it, or answer {@code errorCode} (with {@code errorLabels}
     * replacing the server's own labels); or, with only {@code writeConcernError}, let a write
     * command run and then report that write concern error (applied, outcome unknown). Filters:
     * {@code appName}, {@code namespace}.
     * <li>{@code failGetMoreAfterCursorCheckout}: a getMore fails with {@code errorCode} after
     * finding its cursor, which dies with it (as when mongod's getMore throws).
     * <li>{@code onPrimaryTransactionalWrite}: a retryable write is applied and recorded, then its
     * connection is closed before the reply ({@code closeConnection}, default true): the
     * driver's retry must get the recorded result. With {@code failBeforeCommitExceptionCode} the
     * write is not applied.
     * </ul>
     *
     * Modes: {@code "alwaysOn"}, {@code "off"}, {@code {times: n}}, {@code {skip: n}},
     * {@code {activationProbability: p}}. Other fail points are refused: we cannot do what they do.
     */
    static final class FailPoints {
        private static final Set<String> KNOWN = Set.of("failCommand", "failGetMoreAfterCursorCheckout",
            "onPrimaryTransactionalWrite");
        /** The commands that take a write concern: a writeConcernError applies to these only. */
        private static final Set<String> WRITE_CONCERN_COMMANDS = Set.of("insert", "update", "delete",
            "findandmodify", "create", "drop", "dropdatabase", "createindexes", "dropindexes",
            "renamecollection", "collmod", "committransaction", "aborttransaction");

        /** One configured fail point and its mode's state. */
        static final class FailPoint {
            final String mode; // off, alwaysOn, times, skip, activationProbability
            long n;
            final double probability;
            final Document data;
            long timesEntered;

            FailPoint(String mode, long n, double probability, Document data) {
                this.mode = mode;
                this.n = n;
                this.probability = probability;
                this.data = data;
            }

            /** One activation: whether the fail point fires now, by its mode. */
            boolean fire() {
                switch (mode) {
                    case "alwaysOn":
                        timesEntered++;
                        return true;
                    case "times":
                        if (n <= 0) {
                            return false;
                        }
                        n--;
                        timesEntered++;
                        return true;
                    case "skip":
                        if (n > 0) {
                            n--;
                            return false;
                        }
                        timesEntered++;
                        return true;
                    case "activationProbability":
                        if (Math.random() < probability) {
                            timesEntered++;
                            return true;
                        }
                        return false;
                    default:
                        return false;
                }
            }
        }

        private final Map<String, FailPoint> points = new LinkedHashMap<>();

        synchronized Document configure(String db, Document body) {
            if (!db.equals("admin")) {
                throw new MongoServerError(13, "Unauthorized", "configureFailPoint may only be run against the admin database.");
            }
            Object name = body.get("configureFailPoint");
            if (!(name instanceof String) || !KNOWN.contains(name)) {
                throw new MongoServerError(2, "BadValue", "Cannot find FailPoint named '" + name + "'"
                    + " (the gatequeue embedded server implements " + KNOWN + ")");
            }
            Object mode = body.get("mode");
            Object dataValue = body.get("data");
            Document data = dataValue instanceof Document ? (Document) dataValue : new Document();
            if (isTrue(data.get("blockConnection")) && !(data.get("blockTimeMS") instanceof Number)) {
                throw new MongoServerError(72, "InvalidOptions", "must specify 'blockTimeMS' when 'blockConnection' is true");
            }
            FailPoint point;
            if ("off".equals(mode) || "alwaysOn".equals(mode)) {
                point = new FailPoint((String) mode, 0, 0, data);
            } else if (mode instanceof Document && ((Document) mode).size() == 1) {
                Document m = (Document) mode;
                String key = m.keySet().iterator().next();
                Object value = m.get(key);
                if (!(value instanceof Number)) {
                    throw new MongoServerError(14, "TypeMismatch", "'" + key + "' must be a number");
                }
                switch (key) {
                    case "times":
                    case "skip":
                        if (((Number) value).longValue() < 0) {
                            throw new MongoServerError(2, "BadValue", "'" + key + "' option to 'mode' must be positive");
                        }
                        point = new FailPoint(key, ((Number) value).longValue(), 0, data);
                        break;
                    case "activationProbability":
                        double p = ((Number) value).doubleValue();
                        if (p < 0 || p > 1) {
                            throw new MongoServerError(2, "BadValue",
                                "activationProbability must be between 0.0 and 1.0; found " + p);
                        }
                        point = new FailPoint(key, 0, p, data);
                        break;
                    default:
                        throw new MongoServerError(2, "BadValue", "'mode' must be one of 'off', 'alwaysOn',"
                            + " 'times', 'skip' and 'activationProbability'");
                }
            } else {
                throw new MongoServerError(2, "BadValue", "'mode' must be one of 'off', 'alwaysOn', 'times',"
                    + " 'skip' and 'activationProbability'");
            }
            FailPoint previous = points.put((String) name, point);
            return ok(new Document("count", previous != null ? previous.timesEntered : 0L));
        }

        /** failCommand's filters: the command's name (case aside), appName, namespace. */
        private static boolean applies(Document data, Request request) {
            if (request.name.equals("configurefailpoint")) {
                return false; // never affected, as on mongod
            }
            if (data.containsKey("appName") && !Objects.equals(data.get("appName"), request.appName())) {
                return false;
            }
            if (data.containsKey("namespace") && !Objects.equals(data.get("namespace"), request.namespace())) {
                return false;
            }
            if (isTrue(data.get("failAllCommands"))) {
                return true;
            }
            Object commands = data.get("failCommands");
            if (commands instanceof List) {
                for (Object c : (List<?>) commands) {
                    if (c instanceof String && ((String) c).equalsIgnoreCase(request.command)) {
                        return true;
                    }
                }
            }
            return false;
        }

        private FailPoint active(String name) {
            FailPoint point = points.get(name);
            return point == null || point.mode.equals("off") ? null : point;
        }

        /** failCommand before the command: its data when it fires, else null. */
        synchronized Document beforeCommand(Request request) {
            FailPoint point = active("failCommand");
            if (point == null || !applies(point.data, request)) {
                return null;
            }
            Document data = point.data;
            boolean acts = isTrue(data.get("closeConnection")) || isTrue(data.get("blockConnection"))
                || data.get("errorCode") instanceof Number;
            return acts && point.fire() ? data : null;
        }

        /** failCommand's writeConcernError, after a write command ran: added to its reply. */
        void writeConcernError(Request request, Document response) {
            if (!WRITE_CONCERN_COMMANDS.contains(request.name) || !isOk(response)) {
                return;
            }
            Document data;
            synchronized (this) {
                FailPoint point = active("failCommand");
                if (point == null || !(point.data.get("writeConcernError") instanceof Document)
                    || !applies(point.data, request) || !point.fire()) {
                    return;
                }
                data = point.data;
            }
            response.put("writeConcernError", ((Document) data.get("writeConcernError")).cloneDeeply());
            if (data.get("errorLabels") instanceof List && !((List<?>) data.get("errorLabels")).isEmpty()) {
                response.put("errorLabels", new ArrayList<>((List<?>) data.get("errorLabels")));
            }
        }

        /** failGetMoreAfterCursorCheckout: the cursor is found, then the getMore fails and kills it. */
        void getMoreAfterCursorCheckout(Request request, Runnable killCursor) {
            Document data;
            synchronized (this) {
                FailPoint point = active("failGetMoreAfterCursorCheckout");
                if (point == null) {
                    return;
                }
                if (point.data.containsKey("namespace")
                    && !Objects.equals(point.data.get("namespace"), request.namespace())) {
                    return;
                }
                if (!point.fire()) {
                    return;
                }
                data = point.data;
            }
            killCursor.run();
            int code = data.get("errorCode") instanceof Number ? ((Number) data.get("errorCode")).intValue() : 1;
            throw new MongoServerError(code, ErrorLabels.codeName(code),
                "Hit the 'failGetMoreAfterCursorCheckout' failpoint");
        }

        /** onPrimaryTransactionalWrite around a retryable write that really runs (not a resend). */
        Document transactionalWrite(Request request, Supplier<Document> write) {
            Document data;
            synchronized (this) {
                FailPoint point = active("onPrimaryTransactionalWrite");
                if (point == null || !point.fire()) {
                    return write.get();
                }
                data = point.data;
            }
            boolean close = !data.containsKey("closeConnection") || isTrue(data.get("closeConnection"));
            Object failBefore = data.get("failBeforeCommitExceptionCode");
            if (failBefore instanceof Number) {
                request.closeAfterRun = close;
                int code = ((Number) failBefore).intValue();
                throw new MongoServerError(code, ErrorLabels.codeName(code), "Failing write for txnNumber "
                    + request.body.get("txnNumber") + " due to failpoint. The write must not be reflected.");
            }
            Document response = write.get();
            request.closeAfterRun = close;
            return response;
        }
    }

    /**
     * The error labels mongod adds (src/mongo/db/error_labels.cpp): RetryableWriteError to
     * retryable writes failing with a retriable code or write concern error code,
     * ResumableChangeStreamError to change stream aggregates and getMores failing with a
     * resumable code, NonResumableChangeStreamError to errors of that category (e.g. 286
     * ChangeStreamHistoryLost). failCommand's errorLabels replace them.
     */
    static final class ErrorLabels {
        /** ErrorCodes category RetriableError (src/mongo/base/error_codes.yml). */
        static final Set<Integer> RETRIABLE = Set.of(6, 7, 89, 91, 134, 189, 262, 358, 9001, 10107, 11600,
            11602, 13435, 13436, 50915);
        static final Set<Integer> NETWORK = Set.of(6, 7, 89, 9001);
        static final Set<Integer> NEED_RETARGETTING = Set.of(63, 150, 13388);
        static final Set<Integer> NON_RESUMABLE = Set.of(280, 286);
        private static final Map<Integer, String> NAMES = names();

        private ErrorLabels() {
        }

        private static Map<Integer, String> names() {
            Map<Integer, String> m = new HashMap<>();
            Object[][] table = {
                {1, "InternalError"}, {2, "BadValue"}, {6, "HostUnreachable"}, {7, "HostNotFound"},
                {8, "UnknownError"}, {9, "FailedToParse"}, {11, "UserNotFound"}, {13, "Unauthorized"},
                {14, "TypeMismatch"}, {20, "IllegalOperation"}, {24, "LockTimeout"}, {26, "NamespaceNotFound"},
                {27, "IndexNotFound"}, {40, "ConflictingUpdateOperators"}, {43, "CursorNotFound"},
                {48, "NamespaceExists"}, {50, "MaxTimeMSExpired"}, {59, "CommandNotFound"},
                {63, "OBSOLETE_StaleShardVersion"}, {64, "WriteConcernFailed"}, {66, "ImmutableField"},
                {67, "CannotCreateIndex"}, {72, "InvalidOptions"}, {73, "InvalidNamespace"},
                {79, "UnknownReplWriteConcern"}, {85, "IndexOptionsConflict"}, {86, "IndexKeySpecsConflict"},
                {89, "NetworkTimeout"}, {91, "ShutdownInProgress"}, {96, "OperationFailed"},
                {100, "UnsatisfiableWriteConcern"}, {112, "WriteConflict"}, {121, "DocumentValidationFailure"},
                {125, "CommandFailed"}, {133, "FailedToSatisfyReadPreference"},
                {134, "ReadConcernMajorityNotAvailableYet"}, {136, "CappedPositionLost"},
                {150, "StaleEpoch"}, {168, "InvalidPipelineOperator"}, {175, "QueryPlanKilled"},
                {189, "PrimarySteppedDown"}, {225, "TransactionTooOld"}, {234, "RetryChangeStream"},
                {237, "CursorKilled"}, {251, "NoSuchTransaction"}, {260, "InvalidResumeToken"},
                {262, "ExceededTimeLimit"}, {280, "ChangeStreamFatalError"}, {286, "ChangeStreamHistoryLost"},
                {358, "InternalTransactionNotSupported"}, {462, "IngressRequestRateLimitExceeded"},
                {9001, "SocketException"}, {10107, "NotWritablePrimary"}, {11000, "DuplicateKey"},
                {11600, "InterruptedAtShutdown"}, {11601, "Interrupted"}, {11602, "InterruptedDueToReplStateChange"},
                {13388, "StaleConfig"}, {13435, "NotPrimaryNoSecondaryOk"}, {13436, "NotPrimaryOrSecondary"},
                {50915, "BackupCursorOpenConflictWithCheckpoint"},
            };
            for (Object[] row : table) {
                m.put((Integer) row[0], (String) row[1]);
            }
            return m;
        }

        /** mongod's name for a code; an unregistered code is called Location&lt;code&gt;, as mongod does. */
        static String codeName(int code) {
            String name = NAMES.get(code);
            return name != null ? name : "Location" + code;
        }

        static void apply(Request request, Document response) {
            boolean failed = !isOk(response) && response.get("code") instanceof Number;
            Object wce = response.get("writeConcernError");
            Integer wcCode = wce instanceof Document && ((Document) wce).get("code") instanceof Number
                ? ((Number) ((Document) wce).get("code")).intValue() : null;
            if (!failed && wcCode == null) {
                return;
            }
            List<Object> labels = new ArrayList<>();
            if (response.get("errorLabels") instanceof List) {
                labels.addAll((List<?>) response.get("errorLabels"));
            }
            if (request.labelsOverride != null) {
                labels = new ArrayList<>(request.labelsOverride);
            } else {
                Integer code = failed ? ((Number) response.get("code")).intValue() : null;
                boolean retryableWrite = Commands.WRITE_COMMANDS.contains(request.name)
                    && request.body.get("txnNumber") != null && !request.body.containsKey("autocommit");
                if (retryableWrite && ((code != null && RETRIABLE.contains(code))
                    || (wcCode != null && RETRIABLE.contains(wcCode)))) {
                    add(labels, "RetryableWriteError");
                } else if (resumable(request, code, wcCode)) {
                    add(labels, "ResumableChangeStreamError");
                } else if (code != null && NON_RESUMABLE.contains(code)) {
                    add(labels, "NonResumableChangeStreamError");
                }
            }
            if (labels.isEmpty()) {
                response.remove("errorLabels");
            } else {
                response.put("errorLabels", labels);
            }
        }

        private static boolean resumable(Request request, Integer code, Integer wcCode) {
            return request.changeStream && code != null && wcCode == null
                && (request.name.equals("aggregate") || request.name.equals("getmore"))
                && (RETRIABLE.contains(code) || NETWORK.contains(code) || NEED_RETARGETTING.contains(code)
                    || code == 234 || code == 133);
        }

        private static void add(List<Object> labels, String label) {
            if (!labels.contains(label)) {
                labels.add(label);
            }
        }
    }

    // ------------------------------------------------------------------ server information

    /** What drivers' test suites ask a server about itself (their client_context). */
    static final class ServerInfo {
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
            Document parsed = new Document("net", new Document("bindIp", "127.0.0.1").append("port", server.port))
                .append("replication", new Document("replSetName", server.options.replicaSet))
                .append("setParameter", new Document("enableTestCommands", "1"));
            return ok(new Document("argv", List.of("gatequeue-mongo-server", "--port", String.valueOf(server.port),
                "--replica-set", server.options.replicaSet)).append("parsed", parsed));
        }
    }

    // ------------------------------------------------------------------ retryable writes

    /**
     * Retryable writes: PyMongo sends lsid + txnNumber with each write and resends the same pair
     * after a network error. Like mongod we answer a resent pair from memory instead of applying
     * the write twice (a retried {@code $inc} must not count twice).
     */
    static final class Sessions {
        static final class State {
            long txnNumber = -1;
            Document response;
        }

        private final Map<Object, State> states = new LinkedHashMap<>(64, 0.75f, true) {
            @Override
            protected boolean removeEldestEntry(Map.Entry<Object, State> eldest) {
                return size() > 10_000;
            }
        };

        Document retryable(Object sessionId, long txnNumber, String name, Document body, Supplier<Document> exec) {
            if (sessionId == null) {
                return exec.get();
            }
            State state;
            synchronized (states) {
                state = states.computeIfAbsent(sessionId, k -> new State());
            }
            synchronized (state) {
                if (txnNumber < state.txnNumber) {
                    throw new MongoServerError(225, "TransactionTooOld", "txnNumber " + txnNumber
                        + " is less than last txnNumber " + state.txnNumber + " seen in this session");
                }
                if (txnNumber == state.txnNumber && state.response != null) {
                    return retried(state.response, name, body);
                }
                Document response = exec.get();
                state.txnNumber = txnNumber;
                state.response = isOk(response) ? response.cloneDeeply() : null;
                return response;
            }
        }

        /** The recorded answer, marked as mongod marks a resent write's answer. */
        private static Document retried(Document recorded, String name, Document body) {
            Document again = recorded.cloneDeeply();
            if (name.equals("findandmodify")) {
                again.put("retriedStmtId", 0);
                return again;
            }
            Object statements = body.get(name.equals("insert") ? "documents"
                : name.equals("update") ? "updates" : "deletes");
            int n = statements instanceof List ? ((List<?>) statements).size() : 1;
            List<Integer> ids = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                ids.add(i);
            }
            again.put("retriedStmtIds", ids);
            return again;
        }

        void end(Object sessions) {
            if (!(sessions instanceof List)) {
                return;
            }
            synchronized (states) {
                for (Object s : (List<?>) sessions) {
                    if (s instanceof Document) {
                        states.remove(((Document) s).get("id"));
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ change log

    /** Access to the backend's protected parts. */
    interface BackendAccess {
        CursorRegistry cursors();

        boolean hasDatabase(String name);

        MongoDatabase database(String name);
    }

    /** One change, as mongod's oplog would hold it. */
    static final class Entry {
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

    /**
     * The oplog. The library's own oplog runs no hook for findAndModify, writes insert events for
     * documents a unique index rejected, records no updateDescription, scans the whole oplog
     * collection for every getMore, and has no way to wake a waiting getMore. This one is fed by
     * our collection subclasses (each real insert, update and delete, whatever command caused it),
     * keeps entries in a skip list keyed by cluster time, wakes waiters on append, and is capped.
     */
    static final class ChangeLog implements Oplog {
        static final ThreadLocal<Boolean> REPLACING = ThreadLocal.withInitial(() -> Boolean.FALSE);
        /** Set while a pipeline update writes: mongod diffs its arrays element by element. */
        static final ThreadLocal<Boolean> PIPELINE_UPDATE = ThreadLocal.withInitial(() -> Boolean.FALSE);
        private static final String IMAGES_ID = "gatequeue.changeStreamPreAndPostImages";
        /** Namespaces with changeStreamPreAndPostImages enabled (collMod / create). */
        private final Set<String> imagesEnabled = ConcurrentHashMap.newKeySet();
        private static final String META_ID = "gatequeue.meta";

        private final int maxEntries;
        private final ConcurrentSkipListMap<Long, Entry> entries = new ConcurrentSkipListMap<>();
        private final Map<Long, ChangeStreamCursor> cursors = new ConcurrentHashMap<>();
        private final Object lock = new Object();
        private final List<Runnable> waiters = new ArrayList<>();
        private volatile long last;
        private volatile long trimmedUpTo;
        private BackendAccess backend;
        private MongoCollection<?> store; // the H2 backend persists the log in local.oplog.rs

        ChangeLog(int maxEntries) {
            this.maxEntries = maxEntries;
            this.last = Instant.now().getEpochSecond() << 32;
        }

        void attach(BackendAccess backend, boolean persistent) {
            this.backend = backend;
            if (!persistent) {
                return;
            }
            MongoDatabase local = backend.database("local");
            MongoCollection<?> collection = local.resolveCollection("oplog.rs", false);
            if (collection == null) {
                collection = local.createCollectionOrThrowIfExists("oplog.rs");
            }
            long max = last;
            for (Document d : collection.queryAll()) {
                if (META_ID.equals(d.get("_id"))) {
                    trimmedUpTo = ((Number) d.get("trimmedUpTo")).longValue();
                    continue;
                }
                if (IMAGES_ID.equals(d.get("_id"))) {
                    for (Object ns : (List<?>) d.get("namespaces")) {
                        imagesEnabled.add((String) ns);
                    }
                    continue;
                }
                try {
                    Entry e = Entry.fromDocument(d);
                    entries.put(e.ts, e);
                    max = Math.max(max, e.ts);
                } catch (RuntimeException e) {
                    log.warn("skipping unreadable oplog entry {}", d.get("_id"));
                }
            }
            last = Math.max(max, trimmedUpTo);
            store = collection;
            log.info("loaded {} change events from {}", entries.size(), collection.getFullName());
        }

        long clusterTime() {
            return last;
        }

        long trimmedUpTo() {
            return trimmedUpTo;
        }

        void stampClusterTime(Document response) {
            BsonTimestamp now = new BsonTimestamp(last);
            response.put("operationTime", now);
            response.put("$clusterTime", new Document("clusterTime", now)
                .append("signature", new Document("hash", new BinData(new byte[20]))
                    .append("keyId", 0L)));
        }

        // --- hooks (called under the collection's lock)

        static boolean tracked(MongoCollection<?> collection) {
            return !INTERNAL_DATABASES.contains(collection.getDatabaseName())
                && !collection.getCollectionName().startsWith("system.");
        }

        void onInsert(MongoCollection<?> collection, Document document) {
            if (tracked(collection)) {
                append(new Entry(0, "insert", collection.getDatabaseName(), collection.getCollectionName(),
                    document.get("_id"), document.cloneDeeply(), null, null));
            }
        }

        void onUpdate(MongoCollection<?> collection, Document before, Document after) {
            if (!tracked(collection)) {
                return;
            }
            boolean images = images(collection.getDatabaseName(), collection.getCollectionName());
            Entry entry;
            if (REPLACING.get()) {
                entry = new Entry(0, "replace", collection.getDatabaseName(), collection.getCollectionName(),
                    after.get("_id"), after.cloneDeeply(), null, null);
            } else {
                Document updated = new Document();
                List<String> removed = new ArrayList<>();
                List<Document> truncated = new ArrayList<>();
                diff("", before, after, updated, removed, truncated, PIPELINE_UPDATE.get());
                Document description = new Document("updatedFields", updated.cloneDeeply())
                    .append("removedFields", removed)
                    .append("truncatedArrays", truncated);
                entry = new Entry(0, "update", collection.getDatabaseName(), collection.getCollectionName(),
                    after.get("_id"), null, description, null);
                if (images) {
                    entry.post = after.cloneDeeply();
                }
            }
            if (images) {
                entry.pre = before.cloneDeeply();
            }
            append(entry);
        }

        void onDelete(MongoCollection<?> collection, Document document) {
            if (tracked(collection)) {
                Entry entry = new Entry(0, "delete", collection.getDatabaseName(), collection.getCollectionName(),
                    document.get("_id"), null, null, null);
                if (images(collection.getDatabaseName(), collection.getCollectionName())) {
                    entry.pre = document.cloneDeeply();
                }
                append(entry);
            }
        }

        /**
         * updateDescription as mongod computes it from the documents before and after: changed
         * sub-documents field by field. For pipeline updates mongod diffs arrays element by element
         * too ({@code "a.3": v}, and {@code truncatedArrays} when an array shrank), unless that diff
         * is bigger than the new array; classic updates (and we) report a changed array whole.
         */
        private static void diff(String prefix, Document before, Document after, Document updated,
                                 List<String> removed, List<Document> truncated, boolean arrays) {
            for (Map.Entry<String, Object> e : after.entrySet()) {
                String path = prefix + e.getKey();
                Object now = e.getValue();
                if (!before.containsKey(e.getKey())) {
                    updated.put(path, now);
                    continue;
                }
                Object was = before.get(e.getKey());
                if (was instanceof Document && now instanceof Document) {
                    diff(path + ".", (Document) was, (Document) now, updated, removed, truncated, arrays);
                } else if (arrays && was instanceof List && now instanceof List && !was.equals(now)) {
                    diffArray(path, (List<?>) was, (List<?>) now, updated, removed, truncated);
                } else if (!Objects.equals(was, now)
                    || (was != null && now != null && was.getClass() != now.getClass())) {
                    updated.put(path, now);
                }
            }
            for (String key : before.keySet()) {
                if (!after.containsKey(key)) {
                    removed.add(prefix + key);
                }
            }
        }

        private static void diffArray(String path, List<?> was, List<?> now, Document updated,
                                      List<String> removed, List<Document> truncated) {
            Document elements = new Document();
            List<String> elementsRemoved = new ArrayList<>();
            List<Document> elementsTruncated = new ArrayList<>();
            for (int i = 0; i < now.size(); i++) {
                Object a = i < was.size() ? was.get(i) : null;
                Object b = now.get(i);
                if (i >= was.size()) {
                    elements.put(path + "." + i, b);
                } else if (a instanceof Document && b instanceof Document) {
                    diff(path + "." + i + ".", (Document) a, (Document) b, elements, elementsRemoved,
                        elementsTruncated, true);
                } else if (!Objects.equals(a, b)) {
                    elements.put(path + "." + i, b);
                }
            }
            Document diffSize = new Document("u", elements).append("r", elementsRemoved).append("t", elementsTruncated);
            if (Batches.size(diffSize) >= Batches.size(new Document("a", now))) {
                updated.put(path, now); // the whole array is smaller: mongod sends it whole
                return;
            }
            updated.putAll(elements);
            removed.addAll(elementsRemoved);
            truncated.addAll(elementsTruncated);
            if (now.size() < was.size()) {
                truncated.add(new Document("field", path).append("newSize", now.size()));
            }
        }

        void recordDropDatabase(String db) {
            if (!INTERNAL_DATABASES.contains(db)) {
                append("dropDatabase", db, null, null, null, null);
                imagesEnabled.removeIf(ns -> ns.startsWith(db + "."));
            }
        }

        /** renameCollection: a rename event on the old name (which ends a stream on it). */
        void recordRename(String from, String to) {
            int dot = from.indexOf('.');
            int toDot = to.indexOf('.');
            if (dot < 0 || toDot < 0 || INTERNAL_DATABASES.contains(from.substring(0, dot))) {
                return;
            }
            Entry entry = new Entry(0, "rename", from.substring(0, dot), from.substring(dot + 1), null, null, null,
                null);
            entry.to = new Document("db", to.substring(0, toDot)).append("coll", to.substring(toDot + 1));
            append(entry);
            if (imagesEnabled.remove(from)) {
                imagesEnabled.add(to);
            }
        }

        private void append(String op, String db, String coll, Object id, Document document,
                            Document updateDescription) {
            append(new Entry(0, op, db, coll, id, document, updateDescription, null));
        }

        /** Stamps the entry with the next cluster time and the wall clock, stores it, wakes waiters. */
        private void append(Entry draft) {
            List<Runnable> wake;
            synchronized (lock) {
                long now = (Instant.now().getEpochSecond() << 32) | 1; // increments start at 1
                long ts = Math.max(last + 1, now);
                Entry entry = new Entry(ts, draft.op, draft.db, draft.coll, draft.id, draft.document,
                    draft.updateDescription, Instant.ofEpochMilli(System.currentTimeMillis()));
                entry.pre = draft.pre;
                entry.post = draft.post;
                entry.to = draft.to;
                entries.put(ts, entry);
                if (store != null) {
                    store.addDocument(entry.toDocument());
                }
                last = ts; // after the put: a reader that sees `last` sees the entry
                trimIfNeeded();
                if (waiters.isEmpty()) {
                    return;
                }
                wake = new ArrayList<>(waiters);
                waiters.clear();
            }
            for (Runnable waiter : wake) {
                waiter.run();
            }
        }

        private void trimIfNeeded() {
            if (entries.size() > maxEntries + maxEntries / 10) {
                trimTo(maxEntries);
            }
        }

        /**
         * Drops all but the newest {@code keep} entries, as mongod's oplog truncation does: a
         * resume point older than the newest dropped entry is gone (ChangeStreamHistoryLost).
         * Called under {@code lock}. Returns how many entries went.
         */
        private int trimTo(int keep) {
            long upTo = trimmedUpTo;
            int removed = 0;
            while (entries.size() > keep) {
                Map.Entry<Long, Entry> first = entries.pollFirstEntry();
                upTo = first.getKey();
                removed++;
            }
            if (removed == 0) {
                return 0;
            }
            trimmedUpTo = upTo;
            if (store != null) {
                store.deleteDocuments(new Document("_id", new Document("$lte", upTo)), 0);
                store.deleteDocuments(new Document("_id", META_ID), 1);
                store.addDocument(new Document("_id", META_ID).append("trimmedUpTo", upTo));
            }
            return removed;
        }

        /**
         * {@code {gatequeueTrimChangeLog: 1, keep: N}} on admin: our own command (mongod has none;
         * its oplog rolls over by size) to make "the resume point fell off the oplog" happen on
         * demand in tests. Keeps the newest N entries (default 0).
         */
        Document trimCommand(String db, Document body) {
            if (!db.equals("admin")) {
                throw new MongoServerError(13, "Unauthorized",
                    "gatequeueTrimChangeLog may only be run against the admin database.");
            }
            Object keepValue = body.getOrDefault("keep", 0);
            if (!(keepValue instanceof Number) || ((Number) keepValue).longValue() < 0) {
                throw new MongoServerError(2, "BadValue", "'keep' must be a non-negative number");
            }
            int keep = (int) Math.min(((Number) keepValue).longValue(), Integer.MAX_VALUE);
            int removed;
            synchronized (lock) {
                removed = trimTo(keep);
            }
            log.info("change log trimmed on request: {} entries removed, {} kept", removed, entries.size());
            return ok(new Document("removed", removed).append("kept", entries.size())
                .append("trimmedUpTo", new BsonTimestamp(trimmedUpTo)));
        }

        /** A cluster time of its own, as mongod reserves one for a $currentDate timestamp. */
        long reserveTick() {
            synchronized (lock) {
                long now = (Instant.now().getEpochSecond() << 32) | 1;
                last = Math.max(last + 1, now);
                return last;
            }
        }

        /** False when the log moved past {@code seen} already: the caller should look again. */
        boolean awaitAfter(long seen, Runnable waiter) {
            synchronized (lock) {
                if (last != seen) {
                    return false;
                }
                waiters.add(waiter);
                return true;
            }
        }

        void removeWaiter(Runnable waiter) {
            synchronized (lock) {
                waiters.remove(waiter);
            }
        }

        Collection<Entry> after(long position, long high) {
            if (position >= high) {
                return List.of();
            }
            return entries.subMap(position, false, high, true).values();
        }

        // --- the Oplog interface: data changes arrive through the collection hooks instead

        @Override
        public void handleInsert(String namespace, List<Document> documents) {
        }

        @Override
        public void handleUpdate(String namespace, Document selector, Document query, List<Object> modifiedIds) {
        }

        @Override
        public void handleDelete(String namespace, Document query, List<Object> deletedIds) {
        }

        @Override
        public void handleDropCollection(String namespace) {
            int dot = namespace.indexOf('.');
            String db = namespace.substring(0, dot);
            String coll = namespace.substring(dot + 1);
            if (!INTERNAL_DATABASES.contains(db) && !coll.startsWith("system.")) {
                append("drop", db, coll, null, null, null);
                setImages(db, coll, false);
            }
        }

        /** changeStreamPreAndPostImages: {enabled: bool}, as mongod parses it. */
        static boolean imagesOption(Object option) {
            if (option == null) {
                return false;
            }
            if (!(option instanceof Document) || !(((Document) option).get("enabled") instanceof Boolean)
                || ((Document) option).size() != 1) {
                throw new MongoServerError(40414, "IDLFailedToParse",
                    "changeStreamPreAndPostImages must be {enabled: <bool>}, not " + option);
            }
            return (Boolean) ((Document) option).get("enabled");
        }

        /**
         * collMod, which the library lacks: only changeStreamPreAndPostImages, the one option
         * whose effect we have; any other option is refused rather than ignored.
         */
        Document collMod(String db, Document body) {
            String coll = String.valueOf(body.get("collMod"));
            if (backend.database(db).resolveCollection(coll, false) == null) {
                throw new MongoServerError(26, "NamespaceNotFound", "ns does not exist: " + db + "." + coll);
            }
            Boolean enabled = null;
            for (String key : body.keySet()) {
                switch (key) {
                    case "collMod":
                    case "comment":
                    case "writeConcern":
                    case "$db":
                        break;
                    case "changeStreamPreAndPostImages":
                        enabled = imagesOption(body.get(key));
                        break;
                    default:
                        throw new MongoServerError(72, "InvalidOptions", "collMod option '" + key
                            + "' is not supported by the gatequeue embedded server");
                }
            }
            if (enabled != null) {
                setImages(db, coll, enabled);
            }
            return ok(new Document());
        }

        boolean images(String db, String coll) {
            return imagesEnabled.contains(db + "." + coll);
        }

        /** changeStreamPreAndPostImages of a collection; kept with the change log on disk. */
        void setImages(String db, String coll, boolean enabled) {
            boolean changed = enabled ? imagesEnabled.add(db + "." + coll) : imagesEnabled.remove(db + "." + coll);
            if (changed && store != null) {
                synchronized (lock) {
                    store.deleteDocuments(new Document("_id", IMAGES_ID), 1);
                    store.addDocument(new Document("_id", IMAGES_ID).append("namespaces", new ArrayList<>(imagesEnabled)));
                }
            }
        }

        @Override
        public Cursor createCursor(Document changeStreamDocument, String namespace, Aggregation aggregation) {
            throw new MongoServerError(20, "IllegalOperation", "change streams are opened by the launcher");
        }

        // --- change streams

        private static final Set<String> STREAM_OPTIONS = Set.of("fullDocument", "fullDocumentBeforeChange",
            "resumeAfter", "startAfter", "startAtOperationTime", "allChangesForCluster", "showExpandedEvents",
            "allowToRunOnConfigDB");
        private static final Set<String> STREAM_STAGES = Set.of("$match", "$project", "$addFields", "$set",
            "$unset", "$replaceRoot", "$replaceWith", "$redact");
        /** mongod's stage names (6.0), so that an unknown one fails as there: 40324. */
        private static final Set<String> KNOWN_STAGES = Set.of("$addFields", "$bucket", "$bucketAuto",
            "$changeStream", "$collStats", "$count", "$densify", "$documents", "$facet", "$fill", "$geoNear",
            "$graphLookup", "$group", "$indexStats", "$limit", "$listSessions", "$lookup", "$match", "$merge",
            "$out", "$planCacheStats", "$project", "$redact", "$replaceRoot", "$replaceWith", "$sample",
            "$search", "$searchMeta", "$set", "$setWindowFields", "$skip", "$sort", "$sortByCount",
            "$unionWith", "$unset", "$unwind", "$currentOp", "$listLocalSessions");
        private static final Set<String> FULL_DOCUMENT = Set.of("default", "updateLookup", "whenAvailable",
            "required");
        private static final Set<String> BEFORE_CHANGE = Set.of("off", "whenAvailable", "required");

        Document openStream(String db, Document body) {
            List<Document> pipeline = Aggregation.parse(body.get("pipeline"));
            Document spec = (Document) pipeline.get(0).get("$changeStream");
            for (String key : spec.keySet()) {
                if (!STREAM_OPTIONS.contains(key)) {
                    throw new MongoServerError(40415, "Location40415",
                        "BSON field '$changeStream." + key + "' is an unknown field.");
                }
            }
            String fullDocument = String.valueOf(spec.getOrDefault("fullDocument", "default"));
            if (!FULL_DOCUMENT.contains(fullDocument)) {
                throw new MongoServerError(2, "BadValue", "'" + fullDocument
                    + "' is not a valid value for $changeStream.fullDocument");
            }
            String before = String.valueOf(spec.getOrDefault("fullDocumentBeforeChange", "off"));
            if (!BEFORE_CHANGE.contains(before)) {
                throw new MongoServerError(2, "BadValue", "'" + before
                    + "' is not a valid value for $changeStream.fullDocumentBeforeChange");
            }
            if (isTrue(spec.get("showExpandedEvents"))) {
                // create, createIndexes, modify, ... events: we record none, so refuse the option
                throw new MongoServerError(2, "BadValue",
                    "showExpandedEvents is not supported by the gatequeue embedded server");
            }
            Object readConcern = body.get("readConcern");
            if (readConcern instanceof Document && ((Document) readConcern).get("level") != null
                && !"majority".equals(((Document) readConcern).get("level"))) {
                throw new MongoServerError(72, "InvalidOptions", "$changeStream requires read concern"
                    + " level 'majority', not '" + ((Document) readConcern).get("level") + "'");
            }
            List<Document> stages = pipeline.subList(1, pipeline.size());
            for (Document stage : stages) {
                String name = stage.keySet().iterator().next();
                if (!KNOWN_STAGES.contains(name)) {
                    throw new MongoServerError(40324, "Location40324",
                        "Unrecognized pipeline stage name: '" + name + "'");
                }
                if (!STREAM_STAGES.contains(name)) {
                    throw new MongoServerError(20, "IllegalOperation",
                        name + " is not permitted in a $changeStream pipeline");
                }
            }
            if (!(body.get("cursor") instanceof Document)) {
                throw new MongoServerError(9, "FailedToParse",
                    "The 'cursor' option is required, except for aggregate with the explain argument");
            }

            Object target = body.get("aggregate");
            String coll = target instanceof String ? (String) target : null;
            boolean cluster = isTrue(spec.get("allChangesForCluster"));
            if (cluster && (!db.equals("admin") || coll != null)) {
                throw new MongoServerError(2, "BadValue",
                    "allChangesForCluster is only valid on 'admin' with aggregate: 1");
            }
            if (!cluster && db.equals("admin")) {
                throw new MongoServerError(73, "InvalidNamespace",
                    "$changeStream on admin needs allChangesForCluster: true");
            }

            MongoDatabase database = backend.database(db);
            MongoCollection<?> collection = coll != null ? database.resolveCollection(coll, false) : null;
            Aggregation aggregation = stages.isEmpty() ? null
                : Aggregation.fromPipeline(Pipelines.prepare(stages, Variables.NONE), backend::database, database,
                    collection, this);

            long position;
            Object startAfter = spec.get("startAfter");
            Object resumeAfter = spec.get("resumeAfter");
            Object startAt = spec.get("startAtOperationTime");
            if (startAfter != null) {
                position = Tokens.parse(startAfter, true);
            } else if (resumeAfter != null) {
                position = Tokens.parse(resumeAfter, false);
            } else if (startAt instanceof BsonTimestamp) {
                position = ((BsonTimestamp) startAt).getValue() - 1;
            } else {
                position = last;
            }
            if (position < trimmedUpTo) {
                throw historyLost();
            }

            ChangeStreamCursor cursor = new ChangeStreamCursor(backend.cursors().generateCursorId(), this,
                cluster ? null : db, coll, fullDocument, before, aggregation, position);
            int batchSize = ((Number) ((Document) body.get("cursor")).getOrDefault("batchSize", 0)).intValue();
            ChangeStreamCursor.Batch batch = cursor.take(batchSize);
            if (!batch.closed) {
                backend.cursors().add(cursor);
                cursors.put(cursor.getId(), cursor);
            }
            return cursor.response("firstBatch", batch);
        }

        static MongoServerError historyLost() {
            return new MongoServerError(286, "ChangeStreamHistoryLost",
                "Resume of change stream was not possible, as the resume point may no longer be in the oplog.");
        }

        ChangeStreamCursor cursor(long id) {
            return cursors.get(id);
        }

        void forgetAllCursors() {
            for (Long id : new ArrayList<>(cursors.keySet())) {
                forgetChangeStream(id);
            }
        }

        void forgetChangeStream(long id) {
            if (cursors.remove(id) != null) {
                backend.cursors().remove(id);
            }
        }

        /** mongod kills cursors idle for 10 minutes; a crashed client must not leak them forever. */
        void reapIdleCursors() {
            long now = System.currentTimeMillis();
            for (ChangeStreamCursor c : cursors.values()) {
                if (!c.waiting && now - c.lastUsed > CURSOR_IDLE_TIMEOUT_MS) {
                    log.info("closing change stream cursor {} idle for 10 minutes", c.getId());
                    forgetChangeStream(c.getId());
                }
            }
        }

        Document lookup(String db, String coll, Object id) {
            if (!backend.hasDatabase(db)) {
                return null;
            }
            MongoCollection<?> collection = backend.database(db).resolveCollection(coll, false);
            if (collection == null) {
                return null;
            }
            for (Document d : collection.handleQuery(new Document("_id", id), 0, 1)) {
                return d.cloneDeeply();
            }
            return null;
        }
    }

    /** Resume tokens: the cluster time of the event as 16 hex digits; "01" appended marks an invalidate. */
    static final class Tokens {
        static Document of(long ts) {
            return new Document("_data", String.format("%016X", ts));
        }

        static Document invalidate(long ts) {
            return new Document("_data", String.format("%016X01", ts));
        }

        static long parse(Object token, boolean startAfter) {
            Object data = token instanceof Document ? ((Document) token).get("_data") : null;
            if (!(data instanceof String) || (((String) data).length() != 16 && ((String) data).length() != 18)) {
                throw new MongoServerError(260, "InvalidResumeToken",
                    "resume token was not issued by this server: " + token);
            }
            String hex = (String) data;
            if (hex.length() == 18 && !startAfter) {
                throw new MongoServerError(260, "InvalidResumeToken",
                    "cannot resume a stream after an invalidate event; use startAfter");
            }
            try {
                return Long.parseUnsignedLong(hex.substring(0, 16), 16);
            } catch (NumberFormatException e) {
                throw new MongoServerError(260, "InvalidResumeToken", "malformed resume token: " + token);
            }
        }
    }

    /** A change stream: a position in the change log plus a scope and the user's stages. */
    static final class ChangeStreamCursor extends AbstractCursor {
        static final class Batch {
            final List<Document> events;
            final boolean closed;
            final Document postBatchResumeToken;

            Batch(List<Document> events, boolean closed, Document postBatchResumeToken) {
                this.events = events;
                this.closed = closed;
                this.postBatchResumeToken = postBatchResumeToken;
            }
        }

        final ChangeLog log;
        final String db; // null: the whole cluster
        final String coll; // null: the whole database
        final String fullDocument; // default, updateLookup, whenAvailable, required
        final String beforeChange; // off, whenAvailable, required
        final Aggregation aggregation;
        long position; // the cluster time of the last event consumed
        boolean closed;
        volatile boolean waiting;
        volatile long lastUsed = System.currentTimeMillis();

        ChangeStreamCursor(long id, ChangeLog log, String db, String coll, String fullDocument,
                           String beforeChange, Aggregation aggregation, long position) {
            super(id);
            this.log = log;
            this.db = db;
            this.coll = coll;
            this.fullDocument = fullDocument;
            this.beforeChange = beforeChange;
            this.aggregation = aggregation;
            this.position = position;
        }

        void touch() {
            lastUsed = System.currentTimeMillis();
        }

        String namespace() {
            if (db == null) {
                return "admin.$cmd.aggregate";
            }
            return coll == null ? db + ".$cmd.aggregate" : db + "." + coll;
        }

        @Override
        public boolean isEmpty() {
            return closed;
        }

        @Override
        public List<Document> takeDocuments(int numberToReturn) {
            return take(numberToReturn).events;
        }

        synchronized Batch take(int batchSize) {
            touch();
            if (closed) {
                return new Batch(List.of(), true, Tokens.of(position));
            }
            if (position < log.trimmedUpTo()) {
                closed = true;
                throw ChangeLog.historyLost();
            }
            long high = log.clusterTime();
            int limit = batchSize > 0 ? batchSize : Integer.MAX_VALUE;
            List<Document> out = new ArrayList<>();
            long bytes = 0;
            for (Entry e : log.after(position, high)) {
                Document event = toEvent(e);
                if (event != null) {
                    List<Document> docs = applyStages(event);
                    long size = 0;
                    for (Document d : docs) {
                        if (!event.get("_id").equals(d.get("_id"))) {
                            // mongod's check: without its token an event cannot be resumed from
                            closed = true;
                            throw new MongoServerError(280, "ChangeStreamFatalError", "Encountered an event"
                                + " whose _id field, which contains the resume token, was modified by the"
                                + " pipeline. Modifying the _id field of an event makes it impossible to"
                                + " resume the stream from that point. Only transformations that retain the"
                                + " unmodified _id field are allowed.");
                        }
                        size += Batches.size(d);
                    }
                    if (!out.isEmpty() && bytes + size > Batches.MAX_BYTES) {
                        return new Batch(out, false, Tokens.of(position)); // this event opens the next batch
                    }
                    out.addAll(docs);
                    bytes += size;
                }
                position = e.ts;
                if (invalidates(e)) {
                    Document invalidate = new Document("_id", Tokens.invalidate(e.ts))
                        .append("operationType", "invalidate")
                        .append("clusterTime", new BsonTimestamp(e.ts))
                        .append("wallTime", e.wall);
                    out.add(invalidate);
                    closed = true;
                    return new Batch(out, true, Tokens.invalidate(e.ts));
                }
                if (out.size() >= limit) {
                    return new Batch(out, false, Tokens.of(position));
                }
            }
            position = Math.max(position, high);
            return new Batch(out, false, Tokens.of(position));
        }

        private boolean inScope(Entry e) {
            if (db == null) {
                return !INTERNAL_DATABASES.contains(e.db);
            }
            if (!db.equals(e.db)) {
                return false;
            }
            if (coll == null) {
                return true;
            }
            return coll.equals(e.coll);
        }

        private boolean invalidates(Entry e) {
            if (db == null || !db.equals(e.db)) {
                return false;
            }
            if (coll != null) {
                return (e.op.equals("drop") || e.op.equals("rename")) && coll.equals(e.coll);
            }
            return e.op.equals("dropDatabase");
        }

        private Document toEvent(Entry e) {
            if (!inScope(e)) {
                return null;
            }
            if (coll != null && e.op.equals("dropDatabase")) {
                return null; // the collection's own drop event came before
            }
            Document ns = new Document("db", e.db);
            if (e.coll != null) {
                ns.put("coll", e.coll);
            }
            Document event = new Document("_id", Tokens.of(e.ts))
                .append("operationType", e.op)
                .append("clusterTime", new BsonTimestamp(e.ts))
                .append("wallTime", e.wall);
            switch (e.op) {
                case "insert":
                case "replace":
                    event.put("fullDocument", e.document.cloneDeeply());
                    break;
                case "update":
                    switch (fullDocument) {
                        case "updateLookup":
                            event.put("fullDocument", log.lookup(e.db, e.coll, e.id));
                            break;
                        case "whenAvailable":
                            event.put("fullDocument", e.post != null ? e.post.cloneDeeply() : null);
                            break;
                        case "required":
                            if (e.post == null) {
                                throw imageNotFound("post", e);
                            }
                            event.put("fullDocument", e.post.cloneDeeply());
                            break;
                        default:
                            break;
                    }
                    break;
                default:
                    break;
            }
            event.put("ns", ns);
            if (e.to != null) {
                event.put("to", e.to.cloneDeeply());
            }
            if (e.id != null) {
                event.put("documentKey", new Document("_id", e.id));
            }
            if (e.updateDescription != null) {
                event.put("updateDescription", e.updateDescription.cloneDeeply());
            }
            boolean hasPreImage = e.op.equals("update") || e.op.equals("replace") || e.op.equals("delete");
            if (hasPreImage && !beforeChange.equals("off")) {
                if (e.pre == null && beforeChange.equals("required")) {
                    throw imageNotFound("pre", e);
                }
                event.put("fullDocumentBeforeChange", e.pre != null ? e.pre.cloneDeeply() : null);
            }
            return event;
        }

        private MongoServerError imageNotFound(String which, Entry e) {
            closed = true;
            return new MongoServerError(47, "NoMatchingDocument", "Change stream was configured to require a "
                + which + "-image for all update, delete and replace events, but the " + which
                + "-image was not found for event: " + Tokens.of(e.ts).toString()
                + " (changeStreamPreAndPostImages is off for " + e.db + "." + e.coll + ")");
        }

        private List<Document> applyStages(Document event) {
            if (aggregation == null) {
                return List.of(event);
            }
            return aggregation.runStages(Stream.of(event));
        }

        Document response(String batchKey, Batch batch) {
            Document cursor = new Document()
                .append(batchKey, batch.events)
                .append("postBatchResumeToken", batch.postBatchResumeToken)
                .append("id", batch.closed ? 0L : getId())
                .append("ns", namespace());
            return ok(new Document("cursor", cursor));
        }
    }

    // ------------------------------------------------------------------ backends

    /** The memory backend with our change hooks in its collections. */
    static final class MemBackend extends MemoryBackend implements BackendAccess {
        @Override
        public MemoryDatabase openOrCreateDatabase(String databaseName) {
            return new MemDatabase(databaseName, getCursorRegistry());
        }

        @Override
        protected Oplog createOplog() {
            return changeLog;
        }

        @Override
        public CursorRegistry cursors() {
            return getCursorRegistry();
        }

        @Override
        public boolean hasDatabase(String name) {
            return listDatabaseNames().contains(name);
        }

        @Override
        public MongoDatabase database(String name) {
            return resolveDatabase(name);
        }
    }

    static final class MemDatabase extends MemoryDatabase {
        MemDatabase(String databaseName, CursorRegistry cursorRegistry) {
            super(databaseName, cursorRegistry);
        }

        @Override
        protected MemoryCollection openOrCreateCollection(String collectionName, CollectionOptions options) {
            return new MemCollection(this, collectionName, options, cursorRegistry);
        }
    }

    static final class MemCollection extends MemoryCollection {
        MemCollection(MongoDatabase database, String name, CollectionOptions options, CursorRegistry cursors) {
            super(database, name, options, cursors);
        }

        @Override
        public synchronized void addDocument(Document document) {
            super.addDocument(document);
            changeLog.onInsert(this, document);
        }

        @Override
        public synchronized void removeDocument(Document document) {
            super.removeDocument(document);
            changeLog.onDelete(this, document);
        }

        @Override
        protected void handleUpdate(Integer position, Document oldDocument, Document newDocument) {
            super.handleUpdate(position, oldDocument, newDocument);
            changeLog.onUpdate(this, oldDocument, newDocument);
        }
    }

    /** The H2 (MVStore file) backend with the same hooks; used with --data-dir. */
    static final class DiskBackend extends H2Backend implements BackendAccess {
        DiskBackend(MVStore store) {
            super(store);
        }

        @Override
        protected MongoDatabase openOrCreateDatabase(String databaseName) {
            return new DiskDatabase(databaseName, GateQueueMongoServer.mvStore, getCursorRegistry());
        }

        @Override
        protected Oplog createOplog() {
            return changeLog;
        }

        @Override
        public CursorRegistry cursors() {
            return getCursorRegistry();
        }

        @Override
        public boolean hasDatabase(String name) {
            return listDatabaseNames().contains(name);
        }

        @Override
        public MongoDatabase database(String name) {
            return resolveDatabase(name);
        }
    }

    static final class DiskDatabase extends H2Database {
        DiskDatabase(String databaseName, MVStore store, CursorRegistry cursorRegistry) {
            super(databaseName, store, cursorRegistry);
        }

        @Override
        protected MongoCollection<Object> openOrCreateCollection(String collectionName, CollectionOptions options) {
            String fullName = getDatabaseName() + "." + collectionName;
            MVStore store = GateQueueMongoServer.mvStore;
            MVMap<Object, Document> dataMap = store.openMap("databases." + fullName);
            MVMap<String, Object> metaMap = store.openMap("meta." + fullName);
            return new DiskCollection(this, collectionName, options, dataMap, metaMap, cursorRegistry);
        }
    }

    static final class DiskCollection extends H2Collection {
        DiskCollection(MongoDatabase database, String name, CollectionOptions options,
                       MVMap<Object, Document> dataMap, MVMap<String, Object> metaMap, CursorRegistry cursors) {
            super(database, name, options, dataMap, metaMap, cursors);
        }

        @Override
        public synchronized void addDocument(Document document) {
            super.addDocument(document);
            changeLog.onInsert(this, document);
        }

        @Override
        public synchronized void removeDocument(Document document) {
            super.removeDocument(document);
            changeLog.onDelete(this, document);
        }

        @Override
        protected void handleUpdate(Object position, Document oldDocument, Document newDocument) {
            super.handleUpdate(position, oldDocument, newDocument);
            changeLog.onUpdate(this, oldDocument, newDocument);
        }
    }
}
