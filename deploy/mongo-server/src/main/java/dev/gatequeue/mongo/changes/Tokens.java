package dev.gatequeue.mongo.changes;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/** Resume tokens: the cluster time of the event as 16 hex digits; "01" appended marks an invalidate. */
final class Tokens {
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
