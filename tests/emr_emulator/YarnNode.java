import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

/**
 * The emulated EMR's YARN: Hadoop's own ResourceManager and NodeManagers (MiniYARNCluster) in one JVM.
 * Usage: YarnNode SITE_XML NODE_MANAGERS [key=value ...]; writes the started cluster's configuration to SITE_XML
 * (yarn-site.xml for HADOOP_CONF_DIR), then runs until killed.
 */
public class YarnNode {
  public static void main(String[] args) throws Exception {
    File site = new File(args[0]);
    YarnConfiguration conf = new YarnConfiguration();
    for (int i = 2; i < args.length; i++) {
      String[] pair = args[i].split("=", 2);
      conf.set(pair[0], pair[1]);
    }
    MiniYARNCluster cluster = new MiniYARNCluster("fruits-emr", Integer.parseInt(args[1]), 1, 1);
    cluster.init(conf);
    cluster.start();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::stop));
    File partial = new File(args[0] + ".partial");
    Configuration started = cluster.getConfig();
    try (OutputStream out = new FileOutputStream(partial)) {
      started.writeXml(out);
    }
    if (!partial.renameTo(site)) {
      throw new IllegalStateException("cannot write " + site);
    }
    System.out.println("yarn ready: " + started.get(YarnConfiguration.RM_ADDRESS));
    Thread.currentThread().join();
  }
}
