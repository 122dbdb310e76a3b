package dev.gatequeue.mongo.update;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.bson.Document;

/**
 * Two package-private helpers of the library that a pipeline findAndModify and upsert need to
 * behave exactly like its classic ones: the find projection of findAndModify's {@code fields},
 * and the document an upsert starts from (the query's equality conditions). Reflection keeps
 * our classes out of the library's packages; both are looked up once, when this class loads, so
 * a library upgrade that renames them fails at once, not at the first pipeline upsert.
 */
final class LibraryInternals {
    private static final java.lang.reflect.Constructor<?> PROJECTION;
    private static final java.lang.reflect.Method PROJECT;
    private static final java.lang.reflect.Method SEED;

    static {
        try {
            Class<?> projection = Class.forName("de.bwaldvogel.mongo.backend.Projection");
            PROJECTION = projection.getDeclaredConstructor(Document.class, String.class);
            PROJECTION.setAccessible(true);
            PROJECT = projection.getDeclaredMethod("projectDocument", Document.class);
            PROJECT.setAccessible(true);
            SEED = de.bwaldvogel.mongo.backend.AbstractMongoCollection.class
                .getDeclaredMethod("convertSelectorToDocument", Document.class);
            SEED.setAccessible(true);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    private LibraryInternals() {
    }

    static Document project(Document document, Document fields) {
        try {
            return (Document) PROJECT.invoke(PROJECTION.newInstance(fields, "_id"), document);
        } catch (java.lang.reflect.InvocationTargetException e) {
            throw rethrow(e);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }

    static Document upsertSeed(MongoCollection<?> collection, Document query) {
        try {
            return (Document) SEED.invoke(collection, query);
        } catch (java.lang.reflect.InvocationTargetException e) {
            throw rethrow(e);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }

    private static RuntimeException rethrow(java.lang.reflect.InvocationTargetException e) {
        if (e.getCause() instanceof RuntimeException) {
            return (RuntimeException) e.getCause();
        }
        return new IllegalStateException(e.getCause());
    }
}
