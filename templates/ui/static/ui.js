// importq's pages: the notifications control, the import form and its preview, a job's
// live progress. Plain JavaScript, no build step; it talks to importq's JSON API with the
// session cookie and the page's CSRF token.
"use strict";

(function () {
  const words = document.getElementById("words").dataset;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const numbers = new Intl.NumberFormat(words.locale);
  const FINAL = ["completed", "failed", "cancelled", "undone"];

  // A call of the API with the session. A 401 means the session has ended: sign in again,
  // and come back here.
  async function api(method, url, body, headers, keepalive) {
    const answer = await fetch(url, {
      method: method,
      body: body,
      keepalive: Boolean(keepalive),
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": csrf }, headers || {}),
    });
    if (answer.status === 401) {
      signInAgain();
    }
    return answer;
  }

  function signInAgain() {
    window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  // What an error answer says: its JSON detail, else its status.
  async function detailOf(answer) {
    try {
      return (await answer.json()).detail || String(answer.status);
    } catch (ignored) {
      return String(answer.status) + " " + answer.statusText;
    }
  }

  function show(element, visible) {
    if (element) {
      element.hidden = !visible;
    }
  }

  // ---- Notifications: the unread count on every page, the list, mark as read. ----
  const bell = document.getElementById("notifications-button");
  if (bell) {
    const panel = document.getElementById("notifications-panel");
    const list = document.getElementById("notifications-list");
    const count = document.getElementById("notifications-count");

    const refresh = async function () {
      let answer;
      try {
        answer = await api("GET", "/api/v1/notifications?pageSize=20");
      } catch (ignored) {
        return; // offline for a moment: the next round tries again
      }
      if (!answer.ok) {
        return;
      }
      const page = await answer.json();
      count.textContent = page.unreadCount ? "(" + numbers.format(page.unreadCount) + ")" : "";
      bell.setAttribute(
        "aria-label",
        bell.dataset.label + (page.unreadCount ? " (" + numbers.format(page.unreadCount) + ")" : ""),
      );
      list.replaceChildren();
      for (const item of page.items) {
        const entry = document.createElement("li");
        entry.className = item.readAt ? "read" : "unread";
        const link = document.createElement("a");
        const payload = item.payload || {};
        link.href = "/jobs/" + item.batchId;
        link.textContent =
          (words["status" + capital(payload.status || "")] || payload.status || "") +
          ": " +
          (payload.fileName || payload.dataset || item.batchId);
        link.addEventListener("click", function () {
          // keepalive: the page is left at once, and the request must outlive it.
          api("POST", "/api/v1/notifications/" + item.id + "/read", undefined, undefined, true);
        });
        entry.append(link);
        list.append(entry);
      }
      show(document.getElementById("notifications-none"), page.items.length === 0);
    };

    bell.addEventListener("click", function () {
      const opening = panel.hidden;
      show(panel, opening);
      bell.setAttribute("aria-expanded", String(opening));
      if (opening) {
        refresh();
      }
    });
    document.getElementById("notifications-read-all").addEventListener("click", async function () {
      await api("POST", "/api/v1/notifications/read-all");
      refresh();
    });
    refresh();
    window.setInterval(refresh, 30000);
  }

  function capital(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // ---- The import form: preview, upload with its progress, then the job's page. ----
  const form = document.getElementById("import-form");
  if (form) {
    const file = document.getElementById("file");
    const drop = document.getElementById("drop");
    const progress = document.getElementById("upload-progress");
    const error = document.getElementById("upload-error");
    const TYPES = {
      csv: "text/csv",
      txt: "text/plain",
      tsv: "text/tab-separated-values",
      xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
      json: "application/json",
    };

    const query = function (extra) {
      const chosen = file.files[0];
      const parameters = new URLSearchParams(extra);
      parameters.set("fileName", chosen.name);
      for (const name of ["encoding", "delimiter", "sheet", "decimal", "dateFormat"]) {
        const value = document.getElementById(name).value.trim();
        if (value) {
          parameters.set(name, value);
        }
      }
      // The saved mapping the preview found for this header reads the upload too.
      if (savedMapping && !parameters.has("partial")) {
        parameters.set("mapping", savedMapping);
      }
      return parameters;
    };
    let savedMapping = null;

    // What rows whose key is stored do, and what failed rows do: the modes the reader may
    // use in the chosen dataset; a share of failed rows above which nothing is written.
    const importMode = document.getElementById("import-mode");
    const onError = document.getElementById("on-error");
    const percent = document.getElementById("abort-percent");
    const datasetChosen = function () {
      const option = document.getElementById("dataset").selectedOptions[0];
      const allowed = option.dataset.modes.split(" ");
      for (const choice of importMode.options) {
        choice.disabled = !allowed.includes(choice.value);
      }
      importMode.value = allowed.includes(option.dataset.defaultMode)
        ? option.dataset.defaultMode
        : allowed[0];
    };
    const onErrorChosen = function () {
      show(percent, onError.value === "abort");
      show(percent.labels[0], onError.value === "abort");
    };
    const whatItDoes = function () {
      const asked = { mode: importMode.value, onError: onError.value };
      if (onError.value === "abort") {
        asked.onError = "abort-above=" + (percent.value || "0") + "%";
      }
      return asked;
    };

    const contentType = function (chosen) {
      const extension = chosen.name.split(".").pop().toLowerCase();
      return TYPES[extension] || "text/csv";
    };

    const refused = function (status, text) {
      let detail = text;
      try {
        detail = JSON.parse(text).detail || text;
      } catch (ignored) {
        // Not JSON: the text itself says what went wrong.
      }
      error.textContent = words.uploadFailed + " " + detail + " (" + status + ")";
      show(error, true);
    };

    let previews = 0; // only the answer to the latest question is shown
    const PART = 1024 * 1024;
    const preview = async function () {
      const asked = ++previews;
      fresh();
      savedMapping = null;
      const chosen = file.files[0];
      const section = document.getElementById("preview");
      if (!chosen) {
        show(section, false);
        return;
      }
      const dataset = document.getElementById("dataset").value;
      // The first megabyte says enough of a text file; a workbook or a JSON document
      // is sent whole (neither can be cut).
      const extension = chosen.name.split(".").pop().toLowerCase();
      const cut = ["csv", "tsv", "txt"].includes(extension) && chosen.size > PART;
      let answer;
      let found;
      try {
        answer = await api(
          "POST",
          "/api/v1/" + encodeURIComponent(dataset) + "/preview?" + query({ partial: String(cut) }),
          cut ? chosen.slice(0, PART) : chosen,
          { "Content-Type": contentType(chosen) },
        );
        found = answer.ok ? await answer.json() : await detailOf(answer);
      } catch (error) {
        found = String(error);
      }
      if (asked !== previews) {
        return;
      }
      const body = document.getElementById("preview-body");
      body.replaceChildren();
      if (typeof found === "string") {
        const message = document.createElement("p");
        message.className = "error";
        message.textContent = found;
        body.append(message);
      } else {
        savedMapping = found.mappingName;
        renderPreview(body, found);
      }
      show(section, true);
    };

    // One Idempotency-Key per file and options: sending the same again (a double click,
    // Back then Import) answers with the batch it made, never a second one.
    let key = null;
    const fresh = function () {
      key = null;
    };
    file.addEventListener("change", function () {
      show(error, false);
      preview();
    });
    document.getElementById("dataset").addEventListener("change", function () {
      datasetChosen();
      preview();
    });
    datasetChosen();
    for (const choice of [importMode, onError, percent]) {
      choice.addEventListener("change", function () {
        fresh();
        onErrorChosen();
      });
    }
    for (const name of ["encoding", "delimiter", "sheet", "decimal", "dateFormat"]) {
      document.getElementById(name).addEventListener("change", preview);
    }
    drop.addEventListener("dragover", function (event) {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", function () {
      drop.classList.remove("over");
    });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      drop.classList.remove("over");
      if (event.dataTransfer.files.length) {
        file.files = event.dataTransfer.files;
        file.dispatchEvent(new Event("change"));
      }
    });

    const buttons = [document.getElementById("dry-run"), document.getElementById("import")];
    let mode = "import";
    for (const button of buttons) {
      button.addEventListener("click", function () {
        mode = button.value;
      });
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const chosen = file.files[0];
      show(error, false);
      if (!chosen) {
        file.focus();
        return;
      }
      const dryRun = mode === "dry-run";
      const dataset = document.getElementById("dataset").value;
      key = key || (mode + "-" + Date.now() + "-" + Math.random().toString(36).slice(2));
      const sent = dryRun + ":" + key;
      for (const button of buttons) {
        button.disabled = true;
      }
      const request = new XMLHttpRequest();
      request.open(
        "POST",
        "/api/v1/" +
          encodeURIComponent(dataset) +
          "/import-rows?" +
          query(Object.assign({ dryRun: String(dryRun) }, whatItDoes())),
      );
      request.setRequestHeader("Content-Type", contentType(chosen));
      request.setRequestHeader("X-CSRF-Token", csrf);
      request.setRequestHeader("Idempotency-Key", sent);
      request.upload.addEventListener("progress", function (progressEvent) {
        if (progressEvent.lengthComputable) {
          progress.value = Math.round((100 * progressEvent.loaded) / progressEvent.total);
        }
      });
      const done = function () {
        for (const button of buttons) {
          button.disabled = false;
        }
      };
      request.addEventListener("load", function () {
        done();
        if (request.status === 202) {
          window.location.assign("/jobs/" + JSON.parse(request.responseText).batchId);
        } else if (request.status === 401) {
          signInAgain();
        } else {
          refused(request.status, request.responseText);
        }
      });
      request.addEventListener("error", function () {
        done();
        refused(0, "");
      });
      request.send(chosen);
    });
    for (const button of buttons) {
      button.disabled = false;
    }
  }

  function renderPreview(body, found) {
    const said = document.getElementById("preview").dataset;
    const facts = document.createElement("ul");
    const fact = function (text, kind) {
      const item = document.createElement("li");
      item.textContent = text;
      item.className = kind;
      facts.append(item);
    };
    if (found.mappingName) {
      fact(said.mapping + " " + found.mappingName, "note-mapping");
    }
    if (found.missing.length) {
      fact(said.missing + " " + found.missing.join(", "), "note-missing");
    } else {
      fact(said.complete, "note-complete");
    }
    if (found.unknown.length) {
      fact(said.unknown + " " + found.unknown.join(", "), "note-unknown");
    }
    if (found.duplicated.length) {
      fact(said.duplicated + " " + found.duplicated.join(", "), "note-missing");
    }
    body.append(facts);
    if (!found.rows.length) {
      return;
    }
    const caption = document.createElement("p");
    caption.textContent = said.rows;
    body.append(caption);
    const table = document.createElement("table");
    const head = table.createTHead();
    const names = head.insertRow();
    const matches = head.insertRow();
    names.append(document.createElement("th"));
    matches.append(document.createElement("th"));
    found.header.forEach(function (name, index) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = name;
      names.append(cell);
      const match = document.createElement("td");
      match.textContent = found.columns[index] || said.ignored;
      match.className = found.columns[index] ? "matched" : "ignored";
      matches.append(match);
    });
    const rows = table.createTBody();
    for (const row of found.rows) {
      const line = rows.insertRow();
      const number = document.createElement("th");
      number.scope = "row";
      number.textContent = row.line;
      line.append(number);
      row.cells.forEach(function (value, index) {
        const cell = line.insertCell();
        cell.textContent = value === null ? "" : value;
        const problem = row.problems[String(index)];
        if (problem) {
          cell.className = "refused";
          const note = document.createElement("span");
          note.className = "problem";
          note.textContent = problem;
          cell.append(note);
        }
      });
      if (row.message) {
        const cell = line.insertCell();
        cell.className = "refused";
        cell.textContent = row.message;
      }
    }
    body.append(table);
  }

  // ---- A job's page: its progress, live over server-sent events; cancel. ----
  const article = document.getElementById("job");
  if (article) {
    let job = JSON.parse(article.dataset.job);
    const bar = document.getElementById("progress");
    const cancel = document.getElementById("cancel");
    const undo = document.getElementById("undo");
    const REPORTS = { success: "report-success", duplicates: "report-duplicates", failures: "report-failures" };

    const render = function () {
      const final = FINAL.includes(job.status) && job.result !== null;
      const progress = job.progress;
      const percent = final
        ? 100
        : progress.totalRows
          ? Math.min(99, Math.floor((100 * progress.processedRows) / progress.totalRows))
          : 0;
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute("aria-valuetext", percent + " %");
      bar.firstElementChild.style.width = percent + "%";
      const status = words["status" + capital(job.status)] || job.status;
      document.getElementById("status-words").textContent =
        (job.dryRun ? words.dryRun + ": " : "") + status;
      document.getElementById("count-rows").textContent = numbers.format(progress.totalRows);
      document.getElementById("count-processed").textContent = numbers.format(progress.processedRows);
      const kinds = ["successes", "duplicates", "failures", "inserted", "updated", "unchanged"];
      for (const kind of kinds.concat(["deleted", "restored"])) {
        const cell = document.getElementById("count-" + kind);
        if (cell) {
          cell.textContent = numbers.format(progress[kind]);
        }
      }
      const started = Date.parse(job.createdAt);
      const ended = job.completedAt ? Date.parse(job.completedAt) : Date.now();
      const seconds = Math.max(0.001, (ended - started) / 1000);
      document.getElementById("elapsed").textContent = numbers.format(Math.round(seconds * 10) / 10) + " s";
      document.getElementById("rate").textContent = numbers.format(Math.round(progress.processedRows / seconds));
      const lastError = document.getElementById("last-error");
      lastError.textContent = job.lastError || "";
      show(lastError, Boolean(job.lastError));
      show(cancel, job.status === "active" && !job.cancelledAt && job.type !== "undo");
      const wrote = progress.inserted + progress.updated > 0;
      show(
        undo,
        final && wrote && !job.dryRun && job.type !== "undo" && job.status !== "undone",
      );
      const reports = document.getElementById("reports");
      show(reports, final);
      if (final) {
        for (const kind in REPORTS) {
          const url = job.result.reportUrls[kind];
          const item = document.getElementById(REPORTS[kind]);
          show(item, Boolean(url));
          if (url) {
            item.firstElementChild.href = url;
          }
        }
        show(document.getElementById("again"), Boolean(job.result.reportUrls.failures));
      }
      return final;
    };

    const jobUrl = "/api/v1/jobs/" + article.dataset.batch;
    undo.addEventListener("click", async function () {
      if (!window.confirm(undo.dataset.confirm)) {
        return;
      }
      undo.disabled = true;
      const answer = await api("POST", jobUrl + "/undo");
      undo.disabled = false;
      const lastError = document.getElementById("last-error");
      if (answer.status === 202) {
        window.location.assign("/jobs/" + (await answer.json()).batchId);
      } else if (answer.status !== 401) {
        lastError.textContent = await detailOf(answer);
        show(lastError, true);
      }
    });
    // Without the stream (the service restarting, the session ended), the job is read
    // every few seconds instead; a 401 sends the reader to sign in again.
    const poll = async function () {
      try {
        const answer = await api("GET", jobUrl);
        if (answer.ok) {
          job = await answer.json();
        }
      } catch (ignored) {
        // offline for a moment: the next round tries again
      }
      if (!render()) {
        window.setTimeout(poll, 3000);
      }
    };
    // Links older than their expiry are made again (the reports are kept longer).
    const freshLinks = async function () {
      if (!job.result || !job.reportsExpireAt || Date.parse(job.reportsExpireAt) > Date.now()) {
        return;
      }
      const answer = await api("POST", jobUrl + "/report-links");
      if (answer.ok) {
        job.result.reportUrls = (await answer.json()).reportUrls;
        render();
      }
    };
    if (render()) {
      freshLinks();
    } else {
      const events = new EventSource(jobUrl + "/events");
      events.addEventListener("job", function (event) {
        job = JSON.parse(event.data);
        if (render()) {
          events.close();
        }
      });
      events.addEventListener("error", function () {
        if (events.readyState === EventSource.CLOSED) {
          poll();
        }
      });
      const clock = window.setInterval(function () {
        if (render()) {
          window.clearInterval(clock);
        }
      }, 1000);
    }

    cancel.addEventListener("click", async function () {
      if (!window.confirm(words.confirmCancel)) {
        return;
      }
      cancel.disabled = true;
      const answer = await api("POST", "/api/v1/jobs/" + article.dataset.batch + "/cancel");
      if (answer.ok) {
        job = await answer.json();
        render();
      }
      cancel.disabled = false;
    });
  }
})();
