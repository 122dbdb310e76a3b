package dev.gatequeue.mongo.commands;

import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import io.netty.channel.Channel;

import dev.gatequeue.mongo.changes.WriteKind;
import dev.gatequeue.mongo.query.Variables;
import dev.gatequeue.mongo.update.CurrentDate;
import dev.gatequeue.mongo.update.PipelineUpdates;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.wire.Replies.isOk;
import static dev.gatequeue.mongo.wire.Replies.isTrue;
import static dev.gatequeue.mongo.wire.Replies.ok;

/** The write commands' fixes: statements one at a time, pipeline updates, mongod's counts. */
final class Writes {
    private Writes() {
    }

    /** delete statements (and update's) with $$NOW and the command's let put into their $expr. */
    static List<Document> withFilters(Object statements, Variables vars) {
        List<Document> out = new ArrayList<>();
        if (statements instanceof List) {
            for (Object o : (List<?>) statements) {
                Document statement = new Document((Document) o);
                Commands.refuseCollation(statement.get("collation"));
                if (statement.get("q") instanceof Document) {
                    statement.put("q", vars.filter((Document) statement.get("q")));
                }
                out.add(statement);
            }
        }
        return out;
    }
    /**
     * One statement at a time: the library ignores {@code ordered} for updates, runs no
     * pipeline updates, and only per statement do we know whether a change is an update or a
     * replacement (the event types differ).
     */
    static Document update(Server server, Channel channel, String db, String command,
                                   Document body, Variables vars) {
        @SuppressWarnings("unchecked")
        List<Document> statements = (List<Document>) body.get("updates");
        boolean ordered = !body.containsKey("ordered") || isTrue(body.get("ordered"));
        String collection = (String) body.get(command);
        for (Document statement : statements) {
            if (statement.containsKey("sort")) { // MongoDB 8.0 added it; 6.0 refuses it
                throw new MongoServerError(40415, "Location40415",
                    "BSON field 'update.updates.sort' is an unknown field.");
            }
        }
        int n = 0;
        int nModified = 0;
        List<Document> upserted = new ArrayList<>();
        List<Document> writeErrors = new ArrayList<>();
        for (int i = 0; i < statements.size(); i++) {
            Document statement = new Document(statements.get(i));
            Object u = statement.get("u");
            Document response;
            try {
                Commands.refuseCollation(statement.get("collation"));
                Variables statementVars = vars.withConstants(statement.remove("c"), u instanceof List);
                if (statement.get("q") instanceof Document) {
                    statement.put("q", statementVars.filter((Document) statement.get("q")));
                }
                if (u instanceof List) {
                    response = PipelineUpdates.update(server, db, collection, statement, statementVars);
                } else {
                    if (u instanceof Document && !isReplacement((Document) u)) {
                        statement.put("u", CurrentDate.rewrite((Document) u, vars.now, server.changes));
                    }
                    Document single = new Document(body);
                    single.put("updates", List.of(statement));
                    response = server.changes.writing(kind(u),
                        () -> server.backend.handleCommand(channel, db, command, single));
                }
            } catch (MongoServerError e) {
                response = new Document("writeErrors", List.of(new Document("index", 0)
                    .append("code", e.getCode())
                    .append("codeName", e.getCodeName() != null ? e.getCodeName() : ErrorLabels.codeName(e.getCode()))
                    .append("errmsg", e.getMessageWithoutErrorCode())));
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
    static Document findAndModify(Server server, Channel channel, String db, String command,
                                          Document body, Variables vars) {
        Object query = body.get("query");
        if (query instanceof Document) {
            body.put("query", vars.filter((Document) query));
        }
        Object update = body.get("update");
        if (update instanceof List) {
            return PipelineUpdates.findAndModify(server, db, (String) body.get(command), body, vars);
        }
        if (update instanceof Document && !isReplacement((Document) update)) {
            body.put("update", CurrentDate.rewrite((Document) update, vars.now, server.changes));
        }
        Document response = server.changes.writing(kind(update),
            () -> server.backend.handleCommand(channel, db, command, body));
        fixFindAndModify(body, response);
        return response;
    }

    /** A classic update's kind: a document without operators replaces the matched one. */
    private static WriteKind kind(Object update) {
        return update instanceof Document && isReplacement((Document) update)
            ? WriteKind.REPLACEMENT : WriteKind.UPDATE;
    }
    /**
     * The library ignores partialFilterExpression, so a partial unique index would reject
     * documents mongod accepts (every document without the field collides on null). Refuse
     * it loudly rather than behave differently; a sparse unique index works.
     */
    static void refusePartialUniqueIndexes(Document body) {
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
    static void fixInsertCount(Document body, Document response) {
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
}
