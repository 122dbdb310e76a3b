package dev.gatequeue.mongo.query;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.wire.bson.BsonEncoder;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;

/**
 * mongod's batch rules. A batch holds at most 16 MiB of documents (BSONObjMaxUserSize; the
 * reply around it may be a little larger, as mongod's are) and always at least one document,
 * so a single large document still goes through. The library ignores batchSize for aggregate
 * and, without one, puts a find's whole result into one reply: a 78 MB reply that PyMongo
 * refuses ("Message length ... > max 48000000").
 */
public final class Batches {
    public static final int MAX_BYTES = 16 * 1024 * 1024;
    /** The first batch of find and aggregate when the client names no batchSize. */
    static final int DEFAULT_FIRST = 101;

    private Batches() {
    }

    public static int size(Document d) {
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
