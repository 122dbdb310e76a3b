package dev.gatequeue.mongo.query;

import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.bson.Document;

/** The rest of a find or aggregate result, handed out batch by batch. */
public final class QueryCursor extends AbstractCursor {
    final String ns;
    private final List<Document> documents;
    private int next;
    volatile long lastUsed = System.currentTimeMillis();

    QueryCursor(long id, String ns, List<Document> documents) {
        super(id);
        this.ns = ns;
        this.documents = documents;
    }

    @Override
    public synchronized boolean isEmpty() {
        return next >= documents.size();
    }

    /** Up to {@code limit} documents (0: no count limit) and {@link Batches#MAX_BYTES}. */
    @Override
    public synchronized List<Document> takeDocuments(int limit) {
        lastUsed = System.currentTimeMillis();
        List<Document> batch = new ArrayList<>();
        long bytes = 0;
        while (next < documents.size() && (limit <= 0 || batch.size() < limit)) {
            Document d = documents.get(next);
            int size = Batches.size(d);
            if (!batch.isEmpty() && bytes + size > Batches.MAX_BYTES) {
                break;
            }
            batch.add(d);
            bytes += size;
            documents.set(next++, null); // handed out: let it go
        }
        return batch;
    }
}
