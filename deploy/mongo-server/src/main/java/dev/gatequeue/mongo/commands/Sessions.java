package dev.gatequeue.mongo.commands;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.changes.Entry;

import static dev.gatequeue.mongo.wire.Replies.isOk;

/**
 * Retryable writes: PyMongo sends lsid + txnNumber with each write and resends the same pair
 * after a network error. Like mongod we answer a resent pair from memory instead of applying
 * the write twice (a retried {@code $inc} must not count twice).
 */
public final class Sessions {
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
