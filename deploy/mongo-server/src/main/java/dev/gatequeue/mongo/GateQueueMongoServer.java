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
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
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
 * change event corresponds to a document that really changed. See docs/embedded-mongo.md.
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
    static final int MAX_BATCH_BYTES = 8 * 1024 * 1024;
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
        final AtomicInteger connectionIds = new AtomicInteger();
        EventLoopGroup boss;
        EventLoopGroup workers;
        Channel channel;
        int port;

        Server(AbstractMongoBackend backend, ChangeLog changes, Options options) {
            this.backend = backend;
            this.changes = changes;
            this.options = options;
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

    /** A request in flight, so that a deferred getMore can answer it later. */
    static final class Request {
        final ChannelHandlerContext ctx;
        final ClientRequest message;

        Request(ChannelHandlerContext ctx, ClientRequest message) {
            this.ctx = ctx;
            this.message = message;
        }
    }

    static final AttributeKey<Integer> CONNECTION_ID = AttributeKey.valueOf("gatequeue.connectionId");

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

        void reply(Request request, Document response) {
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

        private void dispatch(Request request, String db, String command, Document body) {
            Document response;
            try {
                response = Commands.run(server, this, request, db, command, body);
            } catch (MongoServerException e) {
                if (e.isLogError() && !(e instanceof MongoServerError)) {
                    log.warn("{} failed: {}", command, e.getMessageWithoutErrorCode());
                }
                response = errorResponse(e);
            } catch (RuntimeException e) {
                log.error("{} failed", command, e);
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
            response.putIfNotNull("codeName", error.getCodeName());
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
        private static final List<String> ENVELOPE = List.of(
            "lsid", "txnNumber", "$clusterTime", "$readPreference", "autocommit", "startTransaction",
            "apiVersion", "apiStrict", "apiDeprecationErrors");

        private static final Set<String> WRITE_COMMANDS = Set.of(
            "insert", "update", "delete", "findandmodify");

        static Document run(Server server, Handler handler, Request request, String db,
                            String command, Document body) {
            String name = command.toLowerCase(Locale.ROOT);
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
                        return server.changes.openStream(db, body);
                    }
                    break;
                case "endsessions":
                    server.sessions.end(body.get(command));
                    return ok(new Document());
                case "replsetgetstatus":
                    return replSetGetStatus(server);
                case "replsetinitiate":
                    throw new MongoServerError(23, "AlreadyInitialized", "already initialized");
                default:
                    break;
            }

            Document clean = new Document(body);
            ENVELOPE.forEach(clean::remove);
            Object lsid = body.get("lsid");
            Object txnNumber = body.get("txnNumber");
            Supplier<Document> exec = () -> execute(server, request, db, command, name, clean);
            if (WRITE_COMMANDS.contains(name) && lsid instanceof Document && txnNumber instanceof Number) {
                return server.sessions.retryable(((Document) lsid).get("id"),
                    ((Number) txnNumber).longValue(), exec);
            }
            return exec.get();
        }

        private static Document execute(Server server, Request request, String db, String command,
                                        String name, Document body) {
            Channel channel = request.ctx.channel();
            AbstractMongoBackend backend = server.backend;
            switch (name) {
                case "insert": {
                    // MongoDB's default is ordered; the library's is unordered.
                    body.putIfAbsent("ordered", Boolean.TRUE);
                    Document response = backend.handleCommand(channel, db, command, body);
                    fixInsertCount(body, response);
                    return response;
                }
                case "update":
                    return update(backend, channel, db, command, body);
                case "findandmodify": {
                    Object update = body.get("update");
                    ChangeLog.REPLACING.set(update instanceof Document && isReplacement((Document) update));
                    try {
                        Document response = backend.handleCommand(channel, db, command, body);
                        fixFindAndModify(body, response);
                        return response;
                    } finally {
                        ChangeLog.REPLACING.set(Boolean.FALSE);
                    }
                }
                case "createindexes":
                    refusePartialUniqueIndexes(body);
                    return backend.handleCommand(channel, db, command, body);
                case "dropdatabase": {
                    Document response = backend.handleCommand(channel, db, command, body);
                    server.changes.recordDropDatabase(db);
                    return response;
                }
                case "killcursors": {
                    Document response = backend.handleCommand(channel, db, command, body);
                    Object ids = body.get("cursors");
                    if (ids instanceof List) {
                        for (Object id : (List<?>) ids) {
                            server.changes.forgetCursor(((Number) id).longValue());
                        }
                    }
                    return response;
                }
                default:
                    return backend.handleCommand(channel, db, command, body);
            }
        }

        /**
         * One statement at a time: the library ignores {@code ordered} for updates, and only per
         * statement do we know whether a change is an update or a replacement (the event types
         * differ).
         */
        private static Document update(AbstractMongoBackend backend, Channel channel, String db,
                                       String command, Document body) {
            @SuppressWarnings("unchecked")
            List<Document> statements = (List<Document>) body.get("updates");
            boolean ordered = !body.containsKey("ordered") || isTrue(body.get("ordered"));
            int n = 0;
            int nModified = 0;
            List<Document> upserted = new ArrayList<>();
            List<Document> writeErrors = new ArrayList<>();
            for (int i = 0; i < statements.size(); i++) {
                Document statement = statements.get(i);
                Document single = new Document(body);
                single.put("updates", List.of(statement));
                Object u = statement.get("u");
                ChangeLog.REPLACING.set(u instanceof Document && isReplacement((Document) u));
                Document response;
                try {
                    response = backend.handleCommand(channel, db, command, single);
                } catch (MongoServerError e) {
                    response = new Document("writeErrors", List.of(new Document("index", 0)
                        .append("code", e.getCode()).append("codeName", e.getCodeName())
                        .append("errmsg", e.getMessageWithoutErrorCode())));
                } finally {
                    ChangeLog.REPLACING.set(Boolean.FALSE);
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

        private static boolean isChangeStream(Document body) {
            Object pipeline = body.get("pipeline");
            if (!(pipeline instanceof List) || ((List<?>) pipeline).isEmpty()) {
                return false;
            }
            Object first = ((List<?>) pipeline).get(0);
            return first instanceof Document && ((Document) first).containsKey("$changeStream");
        }

        private static Document hello(Server server, Request request, String command) {
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
            response.put("localTime", Instant.now());
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
            ChangeStreamCursor cursor = server.changes.cursor(cursorId);
            if (cursor == null) {
                Document clean = new Document(body);
                ENVELOPE.forEach(clean::remove);
                return server.backend.handleCommand(request.ctx.channel(), db, "getMore", clean);
            }
            int batchSize = ((Number) body.getOrDefault("batchSize", 0)).intValue();
            Object maxTime = body.get("maxTimeMS");
            long awaitMs = maxTime instanceof Number ? ((Number) maxTime).longValue() : DEFAULT_AWAIT_MS;
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, awaitMs));
            new AwaitingGetMore(server, handler, request, cursor, batchSize, deadline).attempt();
            return null;
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
                    server.changes.forgetCursor(cursor.getId());
                }
            } catch (MongoServerException e) {
                server.changes.forgetCursor(cursor.getId());
                response = errorResponse(e);
            } catch (RuntimeException e) {
                log.error("getMore on change stream failed", e);
                server.changes.forgetCursor(cursor.getId());
                response = errorResponse(new MongoServerError(1, "InternalError", e.toString()));
            }
            cursor.waiting = false;
            cursor.touch();
            server.changes.removeWaiter(this);
            handler.reply(request, response);
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

        Document retryable(Object sessionId, long txnNumber, Supplier<Document> exec) {
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
                    Document again = new Document(state.response);
                    again.put("retriedStmtIds", List.of(0));
                    return again;
                }
                Document response = exec.get();
                state.txnNumber = txnNumber;
                state.response = isOk(response) ? new Document(response) : null;
                return response;
            }
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
        final String op; // insert, update, replace, delete, drop, dropDatabase
        final String db;
        final String coll; // null for dropDatabase
        final Object id;
        final Document document; // insert/replace: the new document
        final Document updateDescription; // update
        final Instant wall;

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
            return d;
        }

        static Entry fromDocument(Document d) {
            Object key = d.get("key");
            return new Entry(((Number) d.get("_id")).longValue(), (String) d.get("op"),
                (String) d.get("db"), (String) d.get("coll"),
                key instanceof Document ? ((Document) key).get("_id") : null,
                (Document) d.get("o"), (Document) d.get("u"), (Instant) d.get("wall"));
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
                append("insert", collection.getDatabaseName(), collection.getCollectionName(),
                    document.get("_id"), document.cloneDeeply(), null);
            }
        }

        void onUpdate(MongoCollection<?> collection, Document before, Document after) {
            if (!tracked(collection)) {
                return;
            }
            if (REPLACING.get()) {
                append("replace", collection.getDatabaseName(), collection.getCollectionName(),
                    after.get("_id"), after.cloneDeeply(), null);
                return;
            }
            Document updated = new Document();
            List<String> removed = new ArrayList<>();
            diff("", before, after, updated, removed);
            Document description = new Document("updatedFields", updated.cloneDeeply())
                .append("removedFields", removed)
                .append("truncatedArrays", List.of());
            append("update", collection.getDatabaseName(), collection.getCollectionName(),
                after.get("_id"), null, description);
        }

        void onDelete(MongoCollection<?> collection, Document document) {
            if (tracked(collection)) {
                append("delete", collection.getDatabaseName(), collection.getCollectionName(),
                    document.get("_id"), null, null);
            }
        }

        private static void diff(String prefix, Document before, Document after, Document updated,
                                 List<String> removed) {
            for (Map.Entry<String, Object> e : after.entrySet()) {
                String path = prefix + e.getKey();
                Object now = e.getValue();
                if (!before.containsKey(e.getKey())) {
                    updated.put(path, now);
                    continue;
                }
                Object was = before.get(e.getKey());
                if (was instanceof Document && now instanceof Document) {
                    diff(path + ".", (Document) was, (Document) now, updated, removed);
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

        void recordDropDatabase(String db) {
            if (!INTERNAL_DATABASES.contains(db)) {
                append("dropDatabase", db, null, null, null, null);
            }
        }

        private void append(String op, String db, String coll, Object id, Document document,
                            Document updateDescription) {
            List<Runnable> wake;
            synchronized (lock) {
                long now = (Instant.now().getEpochSecond() << 32) | 1; // increments start at 1
                long ts = Math.max(last + 1, now);
                Entry entry = new Entry(ts, op, db, coll, id, document, updateDescription, Instant.now());
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
            if (entries.size() <= maxEntries + maxEntries / 10) {
                return;
            }
            long upTo = trimmedUpTo;
            while (entries.size() > maxEntries) {
                Map.Entry<Long, Entry> first = entries.pollFirstEntry();
                upTo = first.getKey();
            }
            trimmedUpTo = upTo;
            if (store != null) {
                store.deleteDocuments(new Document("_id", new Document("$lte", upTo)), 0);
                store.deleteDocuments(new Document("_id", META_ID), 1);
                store.addDocument(new Document("_id", META_ID).append("trimmedUpTo", upTo));
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

        Document openStream(String db, Document body) {
            List<Document> pipeline = Aggregation.parse(body.get("pipeline"));
            Document spec = (Document) pipeline.get(0).get("$changeStream");
            for (String key : spec.keySet()) {
                if (!STREAM_OPTIONS.contains(key)) {
                    throw new MongoServerError(40415, "Location40415",
                        "BSON field '$changeStream." + key + "' is an unknown field.");
                }
            }
            String fullDocument = (String) spec.getOrDefault("fullDocument", "default");
            if (!fullDocument.equals("default") && !fullDocument.equals("updateLookup")) {
                throw new MongoServerError(2, "BadValue", "fullDocument '" + fullDocument
                    + "' is not supported by the embedded server (use 'default' or 'updateLookup')");
            }
            Object before = spec.getOrDefault("fullDocumentBeforeChange", "off");
            if (!"off".equals(before)) {
                throw new MongoServerError(2, "BadValue",
                    "fullDocumentBeforeChange is not supported by the embedded server");
            }
            List<Document> stages = pipeline.subList(1, pipeline.size());
            for (Document stage : stages) {
                String name = stage.keySet().iterator().next();
                if (!STREAM_STAGES.contains(name)) {
                    throw new MongoServerError(2, "BadValue",
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
                : Aggregation.fromPipeline(stages, backend::database, database, collection, this);

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
                cluster ? null : db, coll, fullDocument.equals("updateLookup"), aggregation, position);
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

        void forgetCursor(long id) {
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
                    forgetCursor(c.getId());
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
        final boolean lookup;
        final Aggregation aggregation;
        long position; // the cluster time of the last event consumed
        boolean closed;
        volatile boolean waiting;
        volatile long lastUsed = System.currentTimeMillis();

        ChangeStreamCursor(long id, ChangeLog log, String db, String coll, boolean lookup,
                           Aggregation aggregation, long position) {
            super(id);
            this.log = log;
            this.db = db;
            this.coll = coll;
            this.lookup = lookup;
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
                    for (Document d : applyStages(event)) {
                        out.add(d);
                        bytes += size(d);
                    }
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
                if (out.size() >= limit || bytes >= MAX_BATCH_BYTES) {
                    return new Batch(out, false, Tokens.of(position));
                }
            }
            position = Math.max(position, high);
            return new Batch(out, false, Tokens.of(position));
        }

        private static long size(Document d) {
            ByteBuf buf = Unpooled.buffer();
            try {
                BsonEncoder.encodeDocument(d, buf);
                return buf.readableBytes();
            } finally {
                buf.release();
            }
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
                return e.op.equals("drop") && coll.equals(e.coll);
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
                    if (lookup) {
                        event.put("fullDocument", log.lookup(e.db, e.coll, e.id));
                    }
                    break;
                default:
                    break;
            }
            event.put("ns", ns);
            if (e.id != null) {
                event.put("documentKey", new Document("_id", e.id));
            }
            if (e.updateDescription != null) {
                event.put("updateDescription", e.updateDescription.cloneDeeply());
            }
            return event;
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
