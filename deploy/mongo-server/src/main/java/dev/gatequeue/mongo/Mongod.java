package dev.gatequeue.mongo;

import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;

import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.bson.ObjectId;

/** What this server tells clients it is, and mongod's fixed numbers it keeps. */
public final class Mongod {

    /** MongoDB 6.0: the oldest server version gatequeue supports in production (docs/design.md). */
    public static final MongoVersion VERSION = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(6, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 17;
        }
    };

    public static final long DEFAULT_AWAIT_MS = 1000;
    public static final long CURSOR_IDLE_TIMEOUT_MS = TimeUnit.MINUTES.toMillis(10);
    public static final ObjectId ELECTION_ID = new ObjectId("7fffffff0000000000000001");
    public static final Set<String> INTERNAL_DATABASES = Set.of("admin", "local", "config");

    private Mongod() {
    }
}
