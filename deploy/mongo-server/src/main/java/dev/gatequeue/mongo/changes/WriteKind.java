package dev.gatequeue.mongo.changes;

/** How the change log reports the updates of a write: the event types and their diffs differ. */
public enum WriteKind {
    /** An update with operators: an update event, arrays reported whole when they changed. */
    UPDATE,
    /** A replacement document: a replace event with the new document. */
    REPLACEMENT,
    /** A pipeline update: an update event, arrays diffed element by element as mongod does. */
    PIPELINE_UPDATE,
}
