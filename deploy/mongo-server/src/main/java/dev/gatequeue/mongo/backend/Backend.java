package dev.gatequeue.mongo.backend;

import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.AbstractMongoBackend;
import de.bwaldvogel.mongo.backend.CursorRegistry;

/**
 * The library's backend with our change hooks in its collections, and the parts of it the
 * launcher needs that the library keeps protected.
 */
public interface Backend {
    /** The library's backend itself: it answers the commands we pass through. */
    AbstractMongoBackend library();

    CursorRegistry cursors();

    boolean hasDatabase(String name);

    default MongoDatabase database(String name) {
        return library().resolveDatabase(name);
    }
}
