package dev.gatequeue.mongo.backend;

import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.AbstractMongoBackend;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.oplog.Oplog;
import dev.gatequeue.mongo.changes.ChangeLog;

/**
 * The two backends, memory and H2 (an MVStore file, with {@code --data-dir}), each with our
 * change hooks in its collections: every real insert, update and delete, whatever command caused
 * it, reaches the change log.
 *
 * <p>The library's class tree makes each backend three subclasses (backend, database,
 * collection) of its own classes; what they add is the same for both, side by side here: the
 * collections report each write to {@link ChangeLog#onInsert}, {@link ChangeLog#onUpdate} and
 * {@link ChangeLog#onDelete}, and the backends answer the {@link Backend} view.
 *
 * <p>The subclasses are local classes of the factory methods on purpose. The library's
 * constructors call back into them before a subclass's own fields are assigned (H2Backend opens
 * the databases it finds in the file, and each database opens its collections, from their
 * constructors), so a constructor parameter stored in a field would still be null there. A local
 * class's captured variables are assigned before its superclass constructor runs, so the change
 * log and the store reach every callback without any static state.
 */
public final class Backends {
    private Backends() {
    }

    /** The memory backend: nothing survives the process. */
    public static Backend memory(ChangeLog changes) {
        final class Collection extends MemoryCollection {
            Collection(MongoDatabase database, String name, CollectionOptions options, CursorRegistry cursors) {
                super(database, name, options, cursors);
            }

            @Override
            public synchronized void addDocument(Document document) {
                super.addDocument(document);
                changes.onInsert(this, document);
            }

            @Override
            public synchronized void removeDocument(Document document) {
                super.removeDocument(document);
                changes.onDelete(this, document);
            }

            @Override
            protected void handleUpdate(Integer position, Document oldDocument, Document newDocument) {
                super.handleUpdate(position, oldDocument, newDocument);
                changes.onUpdate(this, oldDocument, newDocument);
            }
        }

        final class Database extends MemoryDatabase {
            Database(String databaseName, CursorRegistry cursorRegistry) {
                super(databaseName, cursorRegistry);
            }

            @Override
            protected MemoryCollection openOrCreateCollection(String collectionName, CollectionOptions options) {
                return new Collection(this, collectionName, options, cursorRegistry);
            }
        }

        final class Memory extends MemoryBackend implements Backend {
            @Override
            public MemoryDatabase openOrCreateDatabase(String databaseName) {
                return new Database(databaseName, getCursorRegistry());
            }

            @Override
            protected Oplog createOplog() {
                return changes;
            }

            @Override
            public AbstractMongoBackend library() {
                return this;
            }

            @Override
            public CursorRegistry cursors() {
                return getCursorRegistry();
            }

            @Override
            public boolean hasDatabase(String name) {
                return listDatabaseNames().contains(name);
            }
        }

        return new Memory();
    }

    /** The H2 backend on {@code store}: data and change log survive restarts. */
    public static Backend disk(ChangeLog changes, MVStore store) {
        final class Collection extends H2Collection {
            Collection(MongoDatabase database, String name, CollectionOptions options,
                       MVMap<Object, Document> dataMap, MVMap<String, Object> metaMap, CursorRegistry cursors) {
                super(database, name, options, dataMap, metaMap, cursors);
            }

            @Override
            public synchronized void addDocument(Document document) {
                super.addDocument(document);
                changes.onInsert(this, document);
            }

            @Override
            public synchronized void removeDocument(Document document) {
                super.removeDocument(document);
                changes.onDelete(this, document);
            }

            @Override
            protected void handleUpdate(Object position, Document oldDocument, Document newDocument) {
                super.handleUpdate(position, oldDocument, newDocument);
                changes.onUpdate(this, oldDocument, newDocument);
            }
        }

        final class Database extends H2Database {
            Database(String databaseName, CursorRegistry cursorRegistry) {
                super(databaseName, store, cursorRegistry);
            }

            @Override
            protected MongoCollection<Object> openOrCreateCollection(String collectionName, CollectionOptions options) {
                String fullName = getDatabaseName() + "." + collectionName;
                MVMap<Object, Document> dataMap = store.openMap("databases." + fullName);
                MVMap<String, Object> metaMap = store.openMap("meta." + fullName);
                return new Collection(this, collectionName, options, dataMap, metaMap, cursorRegistry);
            }
        }

        final class Disk extends H2Backend implements Backend {
            Disk() {
                super(store);
            }

            @Override
            protected MongoDatabase openOrCreateDatabase(String databaseName) {
                return new Database(databaseName, getCursorRegistry());
            }

            @Override
            protected Oplog createOplog() {
                return changes;
            }

            @Override
            public AbstractMongoBackend library() {
                return this;
            }

            @Override
            public CursorRegistry cursors() {
                return getCursorRegistry();
            }

            @Override
            public boolean hasDatabase(String name) {
                return listDatabaseNames().contains(name);
            }
        }

        return new Disk();
    }
}
