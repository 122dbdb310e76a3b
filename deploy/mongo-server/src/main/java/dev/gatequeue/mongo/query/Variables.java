package dev.gatequeue.mongo.query;

import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.aggregation.Expression;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

import dev.gatequeue.mongo.changes.ChangeLog;
import dev.gatequeue.mongo.changes.Entry;

/**
 * The variables of one command: {@code $$NOW} and {@code $$CLUSTER_TIME}, one value each per
 * command as on mongod, from the server's clock (so leases can expire by the server's time,
 * not the clients'), and the user's {@code let} (and an update statement's {@code c}).
 *
 * <p>The library evaluates {@code $$NOW} as {@code Instant.now()} at every use: two documents
 * of one update_many see different times, and the nanoseconds a BSON date cannot hold make a
 * stored value differ from what a client reads back. So we put the values into the command's
 * expressions before the library sees them, as {@code {$literal: value}} (a value is never
 * read again as an expression), and only where mongod evaluates expressions: inside
 * {@code $expr} in filters, and in pipeline stages other than a {@code $match}'s plain
 * conditions.
 */
public final class Variables {
    /** No substitution: change stream stages, where $$NOW is each event's (the library's). */
    public static final Variables NONE = new Variables(null, Map.of());

    public final Instant now;
    private final Map<String, Object> values;

    private Variables(Instant now, Map<String, Object> values) {
        this.now = now;
        this.values = values;
    }

    public static Variables forCommand(ChangeLog clock, Object let) {
        Instant now = Instant.ofEpochMilli(System.currentTimeMillis()); // BSON dates hold milliseconds
        Map<String, Object> values = new LinkedHashMap<>();
        values.put("NOW", now);
        values.put("CLUSTER_TIME", new BsonTimestamp(clock.clusterTime()));
        return new Variables(now, values).withUserVariables(let, "let");
    }

    /** An update statement's constants {@code c}: allowed with pipeline updates only. */
    public Variables withConstants(Object constants, boolean pipeline) {
        if (constants == null) {
            return this;
        }
        if (!pipeline) {
            throw new MongoServerError(51198, "Location51198",
                "Constant values may only be specified for pipeline updates");
        }
        return withUserVariables(constants, "c");
    }

    private Variables withUserVariables(Object let, String field) {
        if (let == null) {
            return this;
        }
        if (!(let instanceof Document)) {
            throw new MongoServerError(14, "TypeMismatch", "BSON field '" + field
                + "' is the wrong type '" + Utils.describeType(let) + "', expected type 'object'");
        }
        Map<String, Object> merged = new LinkedHashMap<>(values);
        Variables scope = new Variables(now, merged);
        for (Map.Entry<String, Object> e : ((Document) let).entrySet()) {
            validateName(e.getKey());
            // let values are expressions themselves, evaluated once (they may use $$NOW)
            Object value = Expression.evaluateDocument(scope.expression(e.getValue()), new Document());
            merged.put(e.getKey(), value);
        }
        return scope;
    }

    /** mongod's rule for user variable names: a lower-case letter first, then letters, digits, _. */
    private static void validateName(String name) {
        if (name.isEmpty()) {
            throw new MongoServerError(16869, "Location16869", "empty variable names are not allowed");
        }
        char first = name.charAt(0);
        if (!(Character.isLowerCase(first) || first > 127)) {
            throw new MongoServerError(16870, "Location16870",
                "'" + name + "' starts with an invalid character for a user variable name");
        }
        for (char c : name.toCharArray()) {
            if (!(Character.isLetterOrDigit(c) || c == '_' || c > 127)) {
                throw new MongoServerError(16871, "Location16871",
                    "'" + name + "' contains an invalid character for a variable name: '" + c + "'");
            }
        }
    }

    /** A query filter: only what is inside $expr is an expression. */
    public Document filter(Document filter) {
        Document out = new Document();
        for (Map.Entry<String, Object> e : filter.entrySet()) {
            String key = e.getKey();
            Object value = e.getValue();
            if (key.equals("$expr")) {
                out.put(key, expression(value));
            } else if ((key.equals("$and") || key.equals("$or") || key.equals("$nor")) && value instanceof List) {
                List<Object> parts = new ArrayList<>();
                for (Object part : (List<?>) value) {
                    parts.add(part instanceof Document ? filter((Document) part) : part);
                }
                out.put(key, parts);
            } else {
                out.put(key, value);
            }
        }
        return out;
    }

    /** An aggregation expression, with our variables put in as literals. */
    Object expression(Object expression) {
        return expression(expression, false);
    }

    /**
     * {@code structural}: the value of an operator (its argument list, or the document of
     * its named arguments), where a list is syntax, not an array.
     * Anywhere else a list is an array literal, whose elements mongod evaluates as
     * expressions: {@code [{at: "$$NOW", id: "$_id"}]} holds a date and the id. The
     * library returns array literals as they are, unevaluated, so one that holds an
     * expression becomes an expression that evaluates each element (see arrayOf).
     */
    private Object expression(Object expression, boolean structural) {
        if (expression instanceof String) {
            return variable((String) expression);
        }
        if (expression instanceof Document) {
            Document d = (Document) expression;
            if (d.size() == 1 && d.containsKey("$literal")) {
                return d;
            }
            boolean operator = d.size() == 1 && d.keySet().iterator().next().startsWith("$");
            Document out = new Document();
            for (Map.Entry<String, Object> e : d.entrySet()) {
                // an operator's value is its arguments; of named arguments, only a few
                // are lists by syntax ($switch's branches, $zip's inputs and defaults)
                boolean syntax = operator || (structural && LIST_ARGUMENTS.contains(e.getKey()));
                out.put(e.getKey(), expression(e.getValue(), syntax));
            }
            return out;
        }
        if (expression instanceof List) {
            List<Object> out = new ArrayList<>();
            boolean evaluated = false;
            for (Object o : (List<?>) expression) {
                Object element = expression(o, false);
                evaluated |= needsEvaluation(element);
                out.add(element);
            }
            return structural || !evaluated ? out : arrayOf(out);
        }
        return expression;
    }

    private static final Set<String> LIST_ARGUMENTS = Set.of("branches", "inputs", "defaults");

    private static boolean needsEvaluation(Object element) {
        return element instanceof Document
            || (element instanceof String && ((String) element).startsWith("$"));
    }

    /**
     * An array literal as an expression the library evaluates element by element:
     * {@code $objectToArray} of a document whose values are the elements (the library
     * evaluates a document's values), mapped back to the values. One difference from
     * mongod remains: an element that evaluates to a missing field is left out, where
     * mongod puts null.
     */
    private static Document arrayOf(List<Object> elements) {
        Document byIndex = new Document();
        for (int i = 0; i < elements.size(); i++) {
            byIndex.put(Integer.toString(i), elements.get(i));
        }
        return new Document("$map", new Document("input", new Document("$objectToArray", byIndex))
            .append("as", "gatequeueElement")
            .append("in", "$$gatequeueElement.v"));
    }

    private Object variable(String reference) {
        if (!reference.startsWith("$$")) {
            return reference;
        }
        String name = reference.substring(2);
        String path = null;
        int dot = name.indexOf('.');
        if (dot >= 0) {
            path = name.substring(dot + 1);
            name = name.substring(0, dot);
        }
        if (!values.containsKey(name)) {
            return reference; // $$ROOT, $$CURRENT, $$this, ...: the library's
        }
        Object value = values.get(name);
        if (path != null) {
            value = value instanceof Document ? Utils.getSubdocumentValue((Document) value, path) : null;
            if (value instanceof Missing) {
                value = null;
            }
        }
        return new Document("$literal", value);
    }
}
