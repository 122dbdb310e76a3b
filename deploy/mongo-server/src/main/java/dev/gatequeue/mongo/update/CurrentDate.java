package dev.gatequeue.mongo.update;

import java.time.Instant;
import java.util.Map;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.changes.Entry;

/**
 * {@code $currentDate} by the same clock as {@code $$NOW}: the library takes
 * {@code Instant.now()} (nanoseconds a BSON date cannot hold, so a stored value differs from
 * what a client reads back) and a timestamp with increment 0, where mongod reserves a tick of
 * the cluster clock. We turn it into a {@code $set} of those values.
 */
public final class CurrentDate {
    private CurrentDate() {
    }

    public static Document rewrite(Document update, Instant now, ChangeLog clock) {
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
