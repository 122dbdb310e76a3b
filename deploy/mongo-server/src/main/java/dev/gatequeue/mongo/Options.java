package dev.gatequeue.mongo;

import java.nio.file.Path;
import java.nio.file.Paths;

/** The command line of the launcher. */
public final class Options {
    public int port = 0;
    public Path dataDir;
    public String replicaSet = "rs0";
    public boolean watchStdin;
    public long parentPid = -1;
    public int oplogMaxEntries = 50_000;
    public int threads = Math.max(2, Runtime.getRuntime().availableProcessors());

    static Options parse(String[] args) {
        Options o = new Options();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--port":
                    o.port = Integer.parseInt(value(args, ++i, a));
                    break;
                case "--data-dir":
                    o.dataDir = Paths.get(value(args, ++i, a));
                    break;
                case "--replica-set":
                    o.replicaSet = value(args, ++i, a);
                    break;
                case "--watch-stdin":
                    o.watchStdin = true;
                    break;
                case "--parent-pid":
                    o.parentPid = Long.parseLong(value(args, ++i, a));
                    break;
                case "--oplog-max-entries":
                    o.oplogMaxEntries = Integer.parseInt(value(args, ++i, a));
                    break;
                case "--threads":
                    o.threads = Integer.parseInt(value(args, ++i, a));
                    break;
                case "-h":
                case "--help":
                    System.err.println("usage: gatequeue-mongo-server [--port N] [--data-dir DIR]"
                        + " [--replica-set NAME] [--watch-stdin] [--parent-pid PID]"
                        + " [--oplog-max-entries N] [--threads N]");
                    System.exit(0);
                    break;
                default:
                    throw new IllegalArgumentException("unknown argument: " + a);
            }
        }
        if (o.port < 0 || o.port > 65535) {
            throw new IllegalArgumentException("--port must be 0..65535");
        }
        if (o.oplogMaxEntries < 100) {
            throw new IllegalArgumentException("--oplog-max-entries must be >= 100");
        }
        return o;
    }

    private static String value(String[] args, int i, String name) {
        if (i >= args.length) {
            throw new IllegalArgumentException(name + " needs a value");
        }
        return args[i];
    }
}
