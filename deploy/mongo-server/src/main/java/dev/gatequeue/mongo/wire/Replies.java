package dev.gatequeue.mongo.wire;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;

import dev.gatequeue.mongo.commands.ErrorLabels;

/** The shape of command replies: ok, errors, and mongod's truthiness of option values. */
public final class Replies {
    private Replies() {
    }

    public static Document errorResponse(MongoServerException e) {
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

    public static Document ok(Document response) {
        response.put("ok", 1.0);
        return response;
    }

    public static boolean isOk(Document response) {
        Object ok = response.get("ok");
        return ok instanceof Number && ((Number) ok).doubleValue() == 1.0;
    }

    public static boolean isTrue(Object value) {
        if (value instanceof Boolean) {
            return (Boolean) value;
        }
        if (value instanceof Number) {
            return ((Number) value).doubleValue() != 0;
        }
        return false;
    }
}
