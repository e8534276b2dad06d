// The original turnq README's Java client, wrapped in a class so it runs as a program. The body of main is the
// README's snippet, unchanged except where it reads its settings; parseRequestId and doWork are the two helpers
// the snippet leaves to the reader.
//
// Usage: java TurnqJavaClient [URL [CHANNEL [API_KEY]]]
// Each argument falls back to the environment: TURNQ_URL, CHANNEL, TURNQ_API_KEY.
// doWork appends "start"/"end" lines with a timestamp to TURNQ_WORK_FILE (label: TURNQ_WORK_LABEL).

import java.net.http.*;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class TurnqJavaClient {
    private static final Pattern REQUEST_ID = Pattern.compile("\"requestId\"\\s*:\\s*\"([^\"]+)\"");
    private static String clientIdForWork = "";

    static String parseRequestId(String json) {
        Matcher m = REQUEST_ID.matcher(json);
        if (!m.find()) {
            throw new IllegalStateException("no requestId in enqueue answer: " + json);
        }
        return m.group(1);
    }

    static String setting(String[] args, int index, String env) {
        if (args.length > index) {
            return args[index];
        }
        String value = System.getenv(env);
        if (value == null || value.isEmpty()) {
            throw new IllegalArgumentException("missing setting: argument " + (index + 1) + " or $" + env);
        }
        return value;
    }

    static void appendWorkLine(String phase) throws Exception {
        String file = System.getenv("TURNQ_WORK_FILE");
        if (file == null || file.isEmpty()) {
            throw new IllegalArgumentException("set TURNQ_WORK_FILE");
        }
        String label = System.getenv().getOrDefault("TURNQ_WORK_LABEL", clientIdForWork);
        double now = System.currentTimeMillis() / 1000.0;
        String line = String.format("%s %s %s %.3f%n", phase, label, clientIdForWork, now);
        Files.writeString(Path.of(file), line, StandardCharsets.UTF_8,
                StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    }

    static void doWork() throws Exception {
        appendWorkLine("start");
        long ms = (long) (Double.parseDouble(System.getenv().getOrDefault("TURNQ_WORK_SECONDS", "0.3")) * 1000);
        Thread.sleep(ms);
        appendWorkLine("end");
    }

    public static void main(String[] args) throws Exception {
        var turnqUrl = setting(args, 0, "TURNQ_URL");
        var channel = setting(args, 1, "CHANNEL");
        var apiKey = setting(args, 2, "TURNQ_API_KEY");
        // ---- from the README, unchanged below this line (but for clientIdForWork, used by doWork) ----
        var clientId = UUID.randomUUID().toString();
        clientIdForWork = clientId;
        var http = HttpClient.newHttpClient();
        // Enqueue
        var enqResp = http.send(
        HttpRequest.newBuilder()
        .POST(HttpRequest.BodyPublishers.ofString("{\"clientId\":\"" + clientId + "\"}"))
        .uri(URI.create(turnqUrl + "/channels/" + channel + "/enqueue"))
        .header("x-api-key", apiKey).header("content-type", "application/json")
        .build(),
        HttpResponse.BodyHandlers.ofString());
        var requestId = parseRequestId(enqResp.body());
        // Subscribe (SSE)
        var sseResp = http.send(
        HttpRequest.newBuilder()
        .GET()
        .uri(URI.create(turnqUrl + "/channels/" + channel +
        "/subscribe?clientId=" + clientId + "&requestId=" + requestId))
        .header("x-api-key", apiKey)
        .build(),
        HttpResponse.BodyHandlers.ofLines());
        String currentEvent = "";
        for (var line : (Iterable<String>) sseResp.body()::iterator) {
        if (line.startsWith("event:")) currentEvent = line.substring(6).trim();
        else if (line.startsWith("data:") && "your-turn".equals(currentEvent)) break;
        }
        // Do work
        doWork();
        // Release
        http.send(
        HttpRequest.newBuilder()
        .POST(HttpRequest.BodyPublishers.ofString(
        "{\"clientId\":\"" + clientId + "\",\"requestId\":\"" + requestId + "\"}"))
        .uri(URI.create(turnqUrl + "/channels/" + channel + "/release"))
        .header("x-api-key", apiKey).header("content-type", "application/json")
        .build(),
        HttpResponse.BodyHandlers.discarding());
    }
}
