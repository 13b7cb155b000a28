// The API's docs page: reads /openapi.json and lists every operation with its parameters and
// responses. Built with DOM calls and textContent only; nothing is loaded from elsewhere.
"use strict";
(function () {
  function el(tag, content, cls) {
    const node = document.createElement(tag);
    if (content !== undefined && content !== null) node.textContent = String(content);
    if (cls) node.className = cls;
    return node;
  }

  function schemaText(schema) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.anyOf) return schema.anyOf.map(schemaText).join(" | ");
    if (schema.type === "array") return schemaText(schema.items) + "[]";
    return schema.type || "object";
  }

  function operation(path, method, op) {
    const box = el("div", null, "api-op");
    const head = el("h3");
    head.appendChild(el("span", method, "method"));
    head.appendChild(el("code", path));
    box.appendChild(head);
    if (op.summary) box.appendChild(el("p", op.summary));
    if (op.description) box.appendChild(el("p", op.description, "muted"));
    const params = op.parameters || [];
    if (params.length) {
      const table = el("table");
      const headRow = el("tr");
      for (const h of ["parameter", "in", "type", "required", "description"]) headRow.appendChild(el("th", h));
      table.appendChild(headRow);
      for (const p of params) {
        const row = el("tr");
        row.appendChild(el("td", p.name));
        row.appendChild(el("td", p.in));
        row.appendChild(el("td", schemaText(p.schema)));
        row.appendChild(el("td", p.required ? "yes" : ""));
        row.appendChild(el("td", p.description || (p.schema && p.schema.description) || ""));
        table.appendChild(row);
      }
      box.appendChild(table);
    }
    const codes = Object.keys(op.responses || {});
    if (codes.length) box.appendChild(el("p", "responses: " + codes.join(", "), "muted"));
    if (method === "get" && !path.includes("{")) {
      const link = el("a", "try it: " + path);
      link.href = path;
      box.appendChild(link);
    }
    return box;
  }

  async function load() {
    const target = document.getElementById("api-docs");
    try {
      const response = await fetch("/openapi.json", { credentials: "same-origin" });
      const doc = await response.json();
      const parts = [el("h2", doc.info.title + " " + doc.info.version)];
      if (doc.info.description) parts.push(el("p", doc.info.description));
      for (const [path, methods] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(methods)) parts.push(operation(path, method, op));
      }
      target.replaceChildren(...parts);
      document.body.dataset.docsLoaded = "true";
    } catch (e) {
      target.replaceChildren(el("p", "The OpenAPI document could not be read: " + e, "error"));
    }
  }

  load();
})();
