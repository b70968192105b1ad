/**
 * Node-RED settings for the bench peer (bench/nodered_peer.py starts Node-RED with these).
 *
 * Environment (set by the driver):
 *   NR_UI_PORT   admin HTTP port on 127.0.0.1 (a free one)
 *   NR_MQTT_URL  broker, mqtt://host:port          (read by flows.json)
 *   NR_TOPIC     monitorme/<ward>/+/+              (read by flows.json)
 *   NR_CLIENT_ID fixed MQTT client id (persistent session)
 *   NR_PG_URL    postgresql://... of the bench database (read by the flow's postgresql node)
 *   NR_TABLE     table the flow inserts into
 *
 * node-red-contrib-postgresql is not on the npm registry this project can reach, so the flow's
 * "postgresql" node is a function node doing what that package does: a pg.Pool (10 connections,
 * its default) running each message's msg.query with msg.params. pg is handed to it here.
 */
module.exports = {
    flowFile: process.env.NR_FLOW_FILE || "flows.json",
    credentialSecret: false,
    flowFilePretty: true,
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.NR_UI_PORT || 1880),
    mqttReconnectTime: 1000,
    functionGlobalContext: {
        pg: require("pg"),
    },
    functionExternalModules: false,
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    logging: {
        console: { level: "info", metrics: false, audit: false },
    },
    editorTheme: {
        tours: false,
    },
};
