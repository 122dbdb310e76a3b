package dev.gatequeue.mongo.query;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.changes.Entry;

/** Aggregation pipelines as the library can run them. */
public final class Pipelines {
    private Pipelines() {
    }

    /**
     * Stage aliases the library lacks ($set is $addFields and $replaceWith is $replaceRoot
     * since MongoDB 4.2), and the command's variables put into the stages' expressions.
     */
    public static List<Document> prepare(List<Document> pipeline, Variables vars) {
        List<Document> out = new ArrayList<>();
        for (Document stage : pipeline) {
            if (stage.size() != 1) {
                throw new MongoServerError(40323, "Location40323",
                    "A pipeline stage specification object must contain exactly one field.");
            }
            String name = stage.keySet().iterator().next();
            Object spec = stage.get(name);
            switch (name) {
                case "$set":
                case "$addFields":
                    out.addAll(addFields(vars.expression(spec)));
                    break;
                case "$replaceWith":
                    out.add(new Document("$replaceRoot", new Document("newRoot", vars.expression(spec))));
                    break;
                case "$match":
                    out.add(new Document(name, spec instanceof Document ? vars.filter((Document) spec) : spec));
                    break;
                case "$lookup":
                case "$unionWith": {
                    if (!(spec instanceof Document)) {
                        out.add(stage);
                        break;
                    }
                    Document d = new Document((Document) spec);
                    if (d.get("let") != null) {
                        d.put("let", vars.expression(d.get("let")));
                    }
                    if (d.get("pipeline") instanceof List) {
                        d.put("pipeline", prepare(Aggregation.parse(d.get("pipeline")), vars));
                    }
                    out.add(new Document(name, d));
                    break;
                }
                case "$facet": {
                    Document facets = new Document();
                    for (Map.Entry<String, Object> e : ((Document) spec).entrySet()) {
                        facets.put(e.getKey(), e.getValue() instanceof List
                            ? prepare(Aggregation.parse(e.getValue()), vars) : e.getValue());
                    }
                    out.add(new Document(name, facets));
                    break;
                }
                case "$project":
                    out.add(new Document(name, nestComputedPaths(vars.expression(spec))));
                    break;
                default:
                    out.add(new Document(name, vars.expression(spec)));
                    break;
            }
        }
        return out;
    }

    /**
     * $addFields / $set as mongod runs them: every expression sees the stage's input document.
     * The library evaluates each field against the document it is building, so
     * {@code {$set: {lease: <new>, late: {$gt: ["$$NOW", "$lease"]}}}} would compare with the
     * new lease; and it would create a field literally named "a.b" for a dotted path. So a
     * stage of several fields becomes: each value into a temporary field (each stage sees the
     * input's fields), then all copied into place (dotted paths nested), then the temporaries
     * unset.
     */
    private static List<Document> addFields(Object spec) {
        if (!(spec instanceof Document)) {
            return List.of(new Document("$addFields", spec));
        }
        Document fields = (Document) spec;
        boolean dotted = fields.keySet().stream().anyMatch(k -> k.contains("."));
        if (fields.size() <= 1 && !dotted) {
            return List.of(new Document("$addFields", fields));
        }
        List<Document> stages = new ArrayList<>();
        Document copy = new Document();
        List<String> temporaries = new ArrayList<>();
        int i = 0;
        for (Map.Entry<String, Object> e : fields.entrySet()) {
            String temporary = "__gatequeue_addFields_" + i++;
            temporaries.add(temporary);
            stages.add(new Document("$addFields", new Document(temporary, e.getValue())));
            Document at = copy;
            String[] parts = e.getKey().split("\\.");
            for (int p = 0; p < parts.length - 1; p++) {
                Object next = at.get(parts[p]);
                if (!(next instanceof Document)) {
                    next = new Document();
                    at.put(parts[p], next);
                }
                at = (Document) next;
            }
            at.put(parts[parts.length - 1], "$" + temporary);
        }
        stages.add(new Document("$addFields", copy));
        stages.add(new Document("$unset", temporaries));
        return stages;
    }

    /**
     * {@code {$project: {"a.b": <expression>}}} computes a.b inside a, as on mongod; the
     * library would create a field literally named "a.b". Written as {@code {a: {b: ...}}},
     * which it computes right, when every key under {@code a} is computed (inclusions stay).
     */
    private static Object nestComputedPaths(Object spec) {
        if (!(spec instanceof Document)) {
            return spec;
        }
        Document in = (Document) spec;
        Set<String> mixed = new java.util.HashSet<>();
        for (Map.Entry<String, Object> e : in.entrySet()) {
            String head = e.getKey().split("\\.", 2)[0];
            if (isInclusion(e.getValue()) || !e.getKey().contains(".")) {
                mixed.add(head);
            }
        }
        Document out = new Document();
        for (Map.Entry<String, Object> e : in.entrySet()) {
            String key = e.getKey();
            String head = key.split("\\.", 2)[0];
            if (!key.contains(".") || key.startsWith("$") || mixed.contains(head)) {
                out.put(key, e.getValue());
                continue;
            }
            Document at = out;
            String[] parts = key.split("\\.");
            for (int i = 0; i < parts.length - 1; i++) {
                Object next = at.get(parts[i]);
                if (!(next instanceof Document)) {
                    next = new Document();
                    at.put(parts[i], next);
                }
                at = (Document) next;
            }
            at.put(parts[parts.length - 1], e.getValue());
        }
        return out;
    }

    private static boolean isInclusion(Object value) {
        return value instanceof Number || value instanceof Boolean;
    }
}
