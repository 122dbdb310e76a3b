package dev.gatequeue.mongo.failpoints;

import de.bwaldvogel.mongo.bson.Document;

/** One configured fail point and its mode's state. */
final class FailPoint {
    final String mode; // off, alwaysOn, times, skip, activationProbability
    long n;
    final double probability;
    final Document data;
    long timesEntered;

    FailPoint(String mode, long n, double probability, Document data) {
        this.mode = mode;
        this.n = n;
        this.probability = probability;
        this.data = data;
    }

    /** One activation: whether the fail point fires now, by its mode. */
    boolean fire() {
        switch (mode) {
            case "alwaysOn":
                timesEntered++;
                return true;
            case "times":
                if (n <= 0) {
                    return false;
                }
                n--;
                timesEntered++;
                return true;
            case "skip":
                if (n > 0) {
                    n--;
                    return false;
                }
                timesEntered++;
                return true;
            case "activationProbability":
                if (Math.random() < probability) {
                    timesEntered++;
                    return true;
                }
                return false;
            default:
                return false;
        }
    }
}
