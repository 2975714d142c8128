/* The processing page: polls the job's status every 1.5 s until it is done or in error, then
 * offers the results and opens them after a short pause. */
(function () {
  "use strict";

  var root = document.getElementById("job");
  if (!root) return;
  var POLL_MS = 1500;
  var REDIRECT_SECONDS = 3;
  var LABELS = { queued: "Queued", processing: "Processing", done: "Completed", completed: "Completed", error: "Error" };
  var statusUrl = root.getAttribute("data-status-url");
  var resultsUrl = root.getAttribute("data-results-url");

  var timer = null;
  var countdown = null;
  var inFlight = false;
  var failures = 0;
  var final = false;
  var stay = false;

  var $ = function (id) { return document.getElementById(id); };
  var note = $("poll-note");

  function isTerminal(status) { return status === "done" || status === "error"; }

  function setNote(text, warn) {
    note.textContent = text;
    note.classList.toggle("warn", !!warn);
  }

  function badge(el, status, large) {
    el.className = "badge badge-" + status + (large ? " badge-large" : "");
    el.textContent = LABELS[status] || status;
  }

  function timeCell(cell, iso) {
    cell.innerHTML = "";
    if (!iso) {
      var dash = document.createElement("span");
      dash.className = "muted";
      dash.textContent = "\u2014";
      cell.appendChild(dash);
      return;
    }
    var time = document.createElement("time");
    time.setAttribute("datetime", iso);
    time.title = iso;
    time.textContent = window.IU.localTime(iso);
    cell.appendChild(time);
  }

  function rowFor(item, index) {
    var rows = $("file-status-rows");
    var row = rows.querySelector('tr[data-item-id="' + item.item_id + '"]');
    if (row) return row;
    row = document.createElement("tr");
    row.setAttribute("data-item-id", item.item_id);
    var classes = ["num", "filename", "", "time", "time", "reason"];
    classes.forEach(function (cls) {
      var cell = document.createElement("td");
      if (cls) cell.className = cls;
      row.appendChild(cell);
    });
    row.cells[2].appendChild(document.createElement("span"));
    rows.appendChild(row);
    return row;
  }

  // Rows follow the job's order (an archive's entries right under it, as they are found),
  // numbered as they stand.
  function placeRow(row, index, item) {
    var rows = $("file-status-rows");
    if (rows.children[index] !== row) rows.insertBefore(row, rows.children[index] || null);
    row.cells[0].textContent = index + 1;
    row.classList.toggle("row-child", Boolean(item.parent_item_id));
  }

  function update(job) {
    badge($("job-status-badge"), job.status, true);
    $("count-total").textContent = job.total;
    $("count-succeeded").textContent = job.succeeded;
    $("count-failed").textContent = job.failed;
    $("error-counter").classList.toggle("has-errors", job.failed > 0);
    var bar = $("job-progress-bar");
    bar.style.width = job.progress + "%";
    bar.className = "progress-bar progress-" + job.status;
    $("job-progress").setAttribute("aria-valuenow", job.progress);
    $("progress-text").textContent = job.processed + " of " + job.total + " files processed (" + job.progress + "%)";
    var message = $("job-message");
    message.textContent = job.message || "";
    message.hidden = !job.message;
    message.classList.toggle("is-error", job.status === "error");
    if (job.completed_at) timeCell($("completed-at"), job.completed_at);
    job.items.forEach(function (item, index) {
      var row = rowFor(item, index);
      row.className = "row-" + item.status;
      placeRow(row, index, item);
      row.cells[1].textContent = item.filename || "(inside archive)";
      row.cells[1].title = item.filename || "";
      badge(row.cells[2].firstElementChild || row.cells[2].appendChild(document.createElement("span")), item.status, false);
      timeCell(row.cells[3], item.started_at);
      timeCell(row.cells[4], item.finished_at);
      row.cells[5].textContent = item.reason || "";
    });
  }

  function seconds(n) {
    return n + (n === 1 ? " second" : " seconds");
  }

  function startRedirect() {
    if (stay || countdown !== null) return;
    var left = REDIRECT_SECONDS;
    $("redirect-seconds").textContent = seconds(left);
    $("redirect-note").hidden = false;
    countdown = window.setInterval(function () {
      left -= 1;
      $("redirect-seconds").textContent = seconds(Math.max(left, 0));
      if (left <= 0) {
        window.clearInterval(countdown);
        window.location.assign(resultsUrl);
      }
    }, 1000);
  }

  function finish(status) {
    final = true;
    window.clearTimeout(timer);
    $("completion").hidden = false;
    $("completion-text").textContent = status === "error"
      ? "Processing finished with errors."
      : "Processing finished: all files were uploaded.";
    setNote("Status is final.", false);
    startRedirect();
  }

  function schedule(delay) {
    window.clearTimeout(timer);
    if (!final) timer = window.setTimeout(poll, delay);
  }

  function poll() {
    if (inFlight) return;
    inFlight = true;
    fetch(statusUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          var err = new Error("signed out");
          err.signedOut = true;
          throw err;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        failures = 0;
        update(job);
        if (isTerminal(job.status)) {
          finish(job.status);
        } else {
          setNote("Updating automatically every 1.5 seconds.", false);
          schedule(POLL_MS);
        }
      })
      .catch(function (err) {
        if (err && err.signedOut) {
          setNote("Your session has ended: sign in again to follow this job. Processing continues on the server.", true);
          return;
        }
        failures += 1;
        setNote("Could not reach the server; trying again. Processing continues on the server.", true);
        schedule(Math.min(15000, POLL_MS * Math.pow(2, failures)));
      })
      .then(function () { inFlight = false; });
  }

  $("refresh-now").addEventListener("click", function () {
    window.clearTimeout(timer);
    poll();
  });
  $("stay-here").addEventListener("click", function () {
    stay = true;
    if (countdown !== null) window.clearInterval(countdown);
    $("redirect-note").hidden = true;
  });

  if (isTerminal(root.getAttribute("data-status"))) {
    finish(root.getAttribute("data-status"));
  } else {
    schedule(POLL_MS);
  }
})();
