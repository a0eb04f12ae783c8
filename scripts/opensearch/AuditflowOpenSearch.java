// Single-node OpenSearch for scripts/stack: the server jars from Maven Central,
// no distribution layout, no bootstrap checks (so it also runs as root).
// scripts/stack compiles this against its downloaded jars and starts it as
//   java -cp CLASSES:LIBS/* AuditflowOpenSearch PATH_HOME
// PATH_HOME/config holds opensearch.yml (all settings) and log4j2.properties.
// SIGTERM closes the node cleanly (shutdown hook), then the JVM exits.

import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.core.LoggerContext;
import org.apache.logging.log4j.core.config.Configurator;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public final class AuditflowOpenSearch extends Node {

    // Modules of the stock distribution that are on the classpath as jars.
    // A required one that is missing is an error; an optional one is skipped.
    private static final String[][] PLUGINS = {
        { "org.opensearch.transport.Netty4Plugin", "required" },                 // HTTP + transport
        { "org.opensearch.analysis.common.CommonAnalysisPlugin", "required" },  // analyzers
        { "org.opensearch.painless.PainlessPlugin", "required" },                // scripts
        { "org.opensearch.index.reindex.ReindexPlugin", "optional" },            // _reindex, _delete_by_query, _update_by_query
    };

    private AuditflowOpenSearch(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(environment, plugins, true);
    }

    private static List<Class<? extends Plugin>> plugins() {
        List<Class<? extends Plugin>> found = new ArrayList<>();
        for (String[] p : PLUGINS) {
            try {
                found.add(Class.forName(p[0]).asSubclass(Plugin.class));
            } catch (ClassNotFoundException e) {
                if (p[1].equals("required")) {
                    throw new IllegalStateException("plugin class " + p[0] + " is not on the classpath", e);
                }
                System.err.println("auditflow-opensearch: optional plugin " + p[0] + " not on the classpath, skipped");
            }
        }
        return found;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: AuditflowOpenSearch PATH_HOME");
            System.exit(2);
        }
        Path home = Paths.get(args[0]).toAbsolutePath();
        final AuditflowOpenSearch node;
        try {
            LogConfigurator.registerErrorListener();
            Settings input = Settings.builder().put(Environment.PATH_HOME_SETTING.getKey(), home.toString()).build();
            // Reads PATH_HOME/config/opensearch.yml.
            Environment environment = InternalSettingsPreparer.prepareEnvironment(
                input, Collections.emptyMap(), null, () -> "auditflow-stack");
            LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(environment.settings()));
            LogConfigurator.configure(environment);
            node = new AuditflowOpenSearch(environment, plugins());
        } catch (Throwable t) {
            System.err.println("auditflow-opensearch: cannot create the node");
            t.printStackTrace();
            System.exit(1);
            return;
        }

        CountDownLatch keepAlive = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(20, TimeUnit.SECONDS)) {
                    System.err.println("auditflow-opensearch: node did not close within 20s");
                }
            } catch (Throwable t) {
                t.printStackTrace();
            } finally {
                keepAlive.countDown();
                Configurator.shutdown((LoggerContext) LogManager.getContext(false));
            }
        }, "auditflow-opensearch-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            System.err.println("auditflow-opensearch: node failed to start");
            t.printStackTrace();
            System.exit(1);
        }
        keepAlive.await();
    }
}
