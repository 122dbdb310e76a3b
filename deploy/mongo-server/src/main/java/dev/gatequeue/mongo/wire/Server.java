package dev.gatequeue.mongo.wire;

import java.net.InetSocketAddress;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import de.bwaldvogel.mongo.backend.AbstractMongoBackend;
import de.bwaldvogel.mongo.wire.MongoExceptionHandler;
import de.bwaldvogel.mongo.wire.MongoWireMessageEncoder;
import de.bwaldvogel.mongo.wire.MongoWireReplyEncoder;

import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.util.concurrent.DefaultThreadFactory;

import dev.gatequeue.mongo.Options;
import dev.gatequeue.mongo.backend.Backend;
import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.changes.ChangeStreams;
import dev.gatequeue.mongo.commands.Sessions;
import dev.gatequeue.mongo.failpoints.FailPoints;
import dev.gatequeue.mongo.query.QueryCursors;

/** The library's MongoServer with our dispatcher in its pipeline instead of its own. */
public final class Server {
    public final Backend access;
    /** The library's backend, which answers what we pass through. */
    public final AbstractMongoBackend backend;
    public final ChangeLog changes;
    public final ChangeStreams streams;
    public final Options options;
    public final Sessions sessions = new Sessions();
    public final FailPoints failPoints = new FailPoints();
    public final QueryCursors queryCursors;
    final AtomicInteger connectionIds = new AtomicInteger();
    private EventLoopGroup boss;
    private EventLoopGroup workers;
    private Channel channel;
    private volatile int port;

    public Server(Backend access, ChangeLog changes, Options options) {
        this.access = access;
        this.backend = access.library();
        this.changes = changes;
        this.streams = new ChangeStreams(changes, access);
        this.options = options;
        this.queryCursors = new QueryCursors(access);
    }

    /** The port it listens on, once started (the one asked for, or the one the system gave). */
    public int port() {
        return port;
    }

    public String me() {
        return "127.0.0.1:" + port;
    }

    public void start() {
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
        workers.scheduleAtFixedRate(streams::reapIdleCursors, 60, 60, TimeUnit.SECONDS);
        workers.scheduleAtFixedRate(queryCursors::reapIdle, 60, 60, TimeUnit.SECONDS);
    }

    public void stop() {
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
