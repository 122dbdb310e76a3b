package dev.gatequeue.mongo.commands;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.bson.Document;

import dev.gatequeue.mongo.wire.Request;

import static dev.gatequeue.mongo.wire.Replies.isOk;

/**
 * The error labels mongod adds (src/mongo/db/error_labels.cpp): RetryableWriteError to
 * retryable writes failing with a retriable code or write concern error code,
 * ResumableChangeStreamError to change stream aggregates and getMores failing with a
 * resumable code, NonResumableChangeStreamError to errors of that category (e.g. 286
 * ChangeStreamHistoryLost). failCommand's errorLabels replace them.
 */
public final class ErrorLabels {
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
    public static String codeName(int code) {
        String name = NAMES.get(code);
        return name != null ? name : "Location" + code;
    }

    public static void apply(Request request, Document response) {
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
