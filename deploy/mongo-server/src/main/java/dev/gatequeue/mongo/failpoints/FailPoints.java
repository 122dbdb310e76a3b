package dev.gatequeue.mongo.failpoints;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.commands.ErrorLabels;
import dev.gatequeue.mongo.wire.Request;

import static dev.gatequeue.mongo.wire.Replies.isOk;
import static dev.gatequeue.mongo.wire.Replies.isTrue;
import static dev.gatequeue.mongo.wire.Replies.ok;

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
public final class FailPoints {
    private static final Set<String> KNOWN = Set.of("failCommand", "failGetMoreAfterCursorCheckout",
        "onPrimaryTransactionalWrite");
    /** The commands that take a write concern: a writeConcernError applies to these only. */
    private static final Set<String> WRITE_CONCERN_COMMANDS = Set.of("insert", "update", "delete",
        "findandmodify", "create", "drop", "dropdatabase", "createindexes", "dropindexes",
        "renamecollection", "collmod", "committransaction", "aborttransaction");

    private final Map<String, FailPoint> points = new LinkedHashMap<>();

    public synchronized Document configure(String db, Document body) {
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
    public synchronized Document beforeCommand(Request request) {
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
    public void writeConcernError(Request request, Document response) {
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
    public void getMoreAfterCursorCheckout(Request request, Runnable killCursor) {
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
    public Document transactionalWrite(Request request, Supplier<Document> write) {
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
