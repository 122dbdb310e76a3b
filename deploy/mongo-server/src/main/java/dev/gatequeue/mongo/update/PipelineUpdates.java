package dev.gatequeue.mongo.update;

import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.ArrayFilters;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;

import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.changes.WriteKind;
import dev.gatequeue.mongo.query.Pipelines;
import dev.gatequeue.mongo.query.Variables;
import dev.gatequeue.mongo.wire.Server;

import static dev.gatequeue.mongo.wire.Replies.isTrue;
import static dev.gatequeue.mongo.wire.Replies.ok;

/**
 * Updates given as an aggregation pipeline (MongoDB 4.2+), which the library does not run:
 * {@code update} and {@code findAndModify} with a list of $addFields/$set, $project, $unset,
 * $replaceRoot/$replaceWith stages. Each matched document runs through the stages (with
 * $$NOW and the command's variables), and the result replaces it under the collection's lock,
 * so the read, the match and the write are one step, as a claim needs. Change streams see an
 * {@code update} event (mongod logs pipeline updates as updates, not replacements).
 */
public final class PipelineUpdates {
    private static final Set<String> STAGES = Set.of("$addFields", "$set", "$project", "$unset",
        "$replaceRoot", "$replaceWith");

    private PipelineUpdates() {
    }

    public static Document update(Server server, String db, String collectionName, Document statement, Variables vars) {
        if (statement.containsKey("arrayFilters")) {
            throw new MongoServerError(72, "InvalidOptions",
                "arrayFilters may not be specified for pipeline-style updates");
        }
        Document query = statement.get("q") instanceof Document ? (Document) statement.get("q") : new Document();
        boolean multi = isTrue(statement.get("multi"));
        boolean upsert = isTrue(statement.get("upsert"));
        MongoDatabase database = server.access.database(db);
        Aggregation stages = stages(server, database, statement.get("u"), vars);
        MongoCollection<?> collection = upsert ? collection(database, collectionName)
            : database.resolveCollection(collectionName, false);
        if (collection == null) {
            return new Document("n", 0).append("nModified", 0);
        }
        synchronized (collection) {
            int matched = 0;
            int modified = 0;
            for (Document document : collection.handleQuery(new Document("query", query), 0, multi ? 0 : 1)) {
                matched++;
                if (replace(server.changes, collection, document, stages)) {
                    modified++;
                }
            }
            if (matched == 0 && upsert) {
                Document inserted = insert(collection, query, stages);
                return new Document("n", 1).append("nModified", 0)
                    .append("upserted", List.of(new Document("index", 0).append("_id", inserted.get("_id"))));
            }
            return new Document("n", matched).append("nModified", modified);
        }
    }

    public static Document findAndModify(Server server, String db, String collectionName, Document body, Variables vars) {
        if (isTrue(body.get("remove"))) {
            throw new MongoServerError(9, "FailedToParse", "Cannot specify both an update and remove=true");
        }
        if (body.containsKey("arrayFilters")) {
            throw new MongoServerError(72, "InvalidOptions",
                "arrayFilters may not be specified for pipeline-style updates");
        }
        Document query = body.get("query") instanceof Document ? (Document) body.get("query") : new Document();
        boolean upsert = isTrue(body.get("upsert"));
        boolean returnNew = isTrue(body.get("new"));
        MongoDatabase database = server.access.database(db);
        Aggregation stages = stages(server, database, body.get("update"), vars);
        MongoCollection<?> collection = upsert ? collection(database, collectionName)
            : database.resolveCollection(collectionName, false);
        Document value = null;
        Document lastError = new Document("n", 0).append("updatedExisting", Boolean.FALSE);
        if (collection != null) {
            synchronized (collection) {
                Document select = new Document("query", query);
                if (body.get("sort") instanceof Document) {
                    select.put("orderby", body.get("sort"));
                }
                Document found = null;
                for (Document d : collection.handleQuery(select, 0, 1)) {
                    found = d;
                }
                if (found != null) {
                    Document before = found.cloneDeeply();
                    replace(server.changes, collection, found, stages);
                    value = returnNew ? byId(collection, before.get("_id")) : before;
                    lastError = new Document("n", 1).append("updatedExisting", Boolean.TRUE);
                } else if (upsert) {
                    Document inserted = insert(collection, query, stages);
                    value = returnNew ? inserted.cloneDeeply() : null;
                    lastError = new Document("n", 1).append("updatedExisting", Boolean.FALSE)
                        .append("upserted", inserted.get("_id"));
                }
            }
        }
        if (value != null && body.get("fields") instanceof Document && !((Document) body.get("fields")).isEmpty()) {
            value = LibraryInternals.project(value, (Document) body.get("fields"));
        }
        return ok(new Document("lastErrorObject", lastError).append("value", value));
    }

    private static Aggregation stages(Server server, MongoDatabase database, Object pipeline, Variables vars) {
        List<Document> stages = Aggregation.parse(pipeline);
        for (Document stage : stages) {
            String name = stage.keySet().iterator().next();
            if (!STAGES.contains(name)) {
                throw new MongoServerError(72, "InvalidOptions",
                    name + " is not allowed to be used within an update");
            }
        }
        return Aggregation.fromPipeline(Pipelines.prepare(stages, vars), server.access::database, database,
            null, server.changes);
    }

    private static MongoCollection<?> collection(MongoDatabase database, String name) {
        MongoCollection<?> collection = database.resolveCollection(name, false);
        if (collection != null) {
            return collection;
        }
        try {
            return database.createCollectionOrThrowIfExists(name);
        } catch (MongoServerException e) {
            return database.resolveCollection(name, true); // created meanwhile by another command
        }
    }

    /**
     * The pipeline's output for one document. An existing document keeps its _id (a pipeline
     * that drops it gets it back; one that changes it fails with ImmutableField); a new one
     * gets an ObjectId first when neither the query nor the pipeline gave it one.
     */
    private static Document transform(Aggregation stages, Document document) {
        List<Document> out = stages.runStages(Stream.of(document.cloneDeeply()));
        if (out.size() != 1) {
            throw new MongoServerError(1, "InternalError", "an update pipeline produced " + out.size() + " documents");
        }
        Document result = out.get(0);
        boolean existing = document.containsKey("_id");
        Object id = existing ? document.get("_id") : new ObjectId();
        if (!result.containsKey("_id")) {
            Document withId = new Document("_id", id);
            withId.putAll(result);
            return withId;
        }
        if (existing && !Objects.equals(result.get("_id"), id)) {
            throw new MongoServerError(66, "ImmutableField",
                "Performing an update on the path '_id' would modify the immutable field '_id'");
        }
        return result;
    }

    /** True when the document changed. The write goes through the library (indexes, hooks). */
    private static boolean replace(ChangeLog changes, MongoCollection<?> collection, Document document,
                                   Aggregation stages) {
        Document result = transform(stages, document);
        if (result.equals(document)) {
            return false;
        }
        Document replacement = new Document(result);
        replacement.remove("_id");
        changes.writing(WriteKind.PIPELINE_UPDATE, () -> collection.updateDocuments(
            new Document("_id", document.get("_id")), replacement, ArrayFilters.empty(), false, false, changes));
        return true;
    }

    /** An upsert: the query's equality fields (as the library's upserts), then the pipeline. */
    private static Document insert(MongoCollection<?> collection, Document query, Aggregation stages) {
        Document seed = LibraryInternals.upsertSeed(collection, query);
        Document base = new Document();
        if (seed.containsKey("_id")) {
            base.put("_id", seed.remove("_id")); // _id first, as mongod stores it
        }
        base.putAll(seed);
        Document result = transform(stages, base);
        collection.addDocument(result);
        return result;
    }

    private static Document byId(MongoCollection<?> collection, Object id) {
        for (Document d : collection.handleQuery(new Document("query", new Document("_id", id)), 0, 1)) {
            return d.cloneDeeply();
        }
        return null;
    }
}
