// An MCP server (stdio, the official TypeScript SDK) that misbehaves on request, for keel's
// tests: `crash` ends the process mid-call, `hang` never answers, `count` says how many
// calls this process has served. With KEEL_MCP_SILENT=1 it never answers anything at all.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

if (process.env.KEEL_MCP_SILENT === "1") {
  process.stdin.resume(); // reads every request and answers none
} else {
  const server = new McpServer({ name: "flaky", version: "1.0.0" });
  let calls = 0;
  server.registerTool("count", { description: "How many calls this server process has served", inputSchema: {} }, async () => {
    calls += 1;
    return { content: [{ type: "text", text: `call ${calls} of process ${process.pid}` }] };
  });
  server.registerTool("crash", { description: "Crash the server", inputSchema: { why: z.string() } }, async ({ why }) => {
    console.error(`crashing on purpose: ${why}`);
    process.exit(3);
  });
  server.registerTool("hang", { description: "Never answer", inputSchema: {} }, () => new Promise(() => {}));
  await server.connect(new StdioServerTransport());
}
