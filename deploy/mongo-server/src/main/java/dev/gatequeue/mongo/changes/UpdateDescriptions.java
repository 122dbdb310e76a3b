package dev.gatequeue.mongo.changes;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Objects;

import de.bwaldvogel.mongo.bson.Document;

import dev.gatequeue.mongo.query.Batches;

/** updateDescription of an update event, from the documents before and after. */
final class UpdateDescriptions {
    private UpdateDescriptions() {
    }

    /**
     * updateDescription as mongod computes it from the documents before and after: changed
     * sub-documents field by field. For pipeline updates mongod diffs arrays element by element
     * too ({@code "a.3": v}, and {@code truncatedArrays} when an array shrank), unless that diff
     * is bigger than the new array; classic updates (and we) report a changed array whole.
     */
    static void diff(String prefix, Document before, Document after, Document updated,
                             List<String> removed, List<Document> truncated, boolean arrays) {
        for (Map.Entry<String, Object> e : after.entrySet()) {
            String path = prefix + e.getKey();
            Object now = e.getValue();
            if (!before.containsKey(e.getKey())) {
                updated.put(path, now);
                continue;
            }
            Object was = before.get(e.getKey());
            if (was instanceof Document && now instanceof Document) {
                diff(path + ".", (Document) was, (Document) now, updated, removed, truncated, arrays);
            } else if (arrays && was instanceof List && now instanceof List && !was.equals(now)) {
                diffArray(path, (List<?>) was, (List<?>) now, updated, removed, truncated);
            } else if (!Objects.equals(was, now)
                || (was != null && now != null && was.getClass() != now.getClass())) {
                updated.put(path, now);
            }
        }
        for (String key : before.keySet()) {
            if (!after.containsKey(key)) {
                removed.add(prefix + key);
            }
        }
    }

    private static void diffArray(String path, List<?> was, List<?> now, Document updated,
                                  List<String> removed, List<Document> truncated) {
        Document elements = new Document();
        List<String> elementsRemoved = new ArrayList<>();
        List<Document> elementsTruncated = new ArrayList<>();
        for (int i = 0; i < now.size(); i++) {
            Object a = i < was.size() ? was.get(i) : null;
            Object b = now.get(i);
            if (i >= was.size()) {
                elements.put(path + "." + i, b);
            } else if (a instanceof Document && b instanceof Document) {
                diff(path + "." + i + ".", (Document) a, (Document) b, elements, elementsRemoved,
                    elementsTruncated, true);
            } else if (!Objects.equals(a, b)) {
                elements.put(path + "." + i, b);
            }
        }
        Document diffSize = new Document("u", elements).append("r", elementsRemoved).append("t", elementsTruncated);
        if (Batches.size(diffSize) >= Batches.size(new Document("a", now))) {
            updated.put(path, now); // the whole array is smaller: mongod sends it whole
            return;
        }
        updated.putAll(elements);
        removed.addAll(elementsRemoved);
        truncated.addAll(elementsTruncated);
        if (now.size() < was.size()) {
            truncated.add(new Document("field", path).append("newSize", now.size()));
        }
    }
}
