/* The upload forms (Direct Upload, ZIP Upload): lab units follow the hospital, files are chosen or dropped, checked
 * gently (the server has the last word), and sent fields-first so a bad form is refused before
 * any file is stored. The chosen files stay chosen whatever goes wrong. */
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (!form) return;
  var config = JSON.parse(document.getElementById("upload-config").textContent);
  var FIELDS = config.fields;
  // What a file of this form looks like by its name or type (the server checks the bytes).
  var ACCEPT = new RegExp(config.accept.pattern, "i");
  var ACCEPT_TYPES = config.accept.types;
  var NOUN = config.accept.noun;
  var BUTTON_TEXT = button_text();
  function button_text() {
    var b = document.getElementById("upload-button");
    return b ? b.textContent : "Upload";
  }
  // The server's own wording (the fundus help's messages), so page and API never differ.
  var MESSAGES = config.messages;

  var labUnit = document.getElementById("lab_unit");
  var pills = document.getElementById("hospital-pills");
  var fileInput = document.getElementById("file-input");
  var dropzone = document.getElementById("dropzone");
  var listWrap = document.getElementById("file-list-wrap");
  var list = document.getElementById("file-list");
  var summary = document.getElementById("file-summary");
  var notes = document.getElementById("file-notes");
  var errorBox = document.getElementById("form-error");
  var button = document.getElementById("upload-button");
  var progress = document.getElementById("upload-progress");
  var progressBar = document.getElementById("upload-progress-bar");
  var progressText = document.getElementById("upload-progress-text");

  var files = [];
  var busy = false;

  // --- hospital and lab unit -------------------------------------------------------------

  function chosenHospital() {
    var checked = form.querySelector('input[name="hospital"]:checked');
    return checked ? checked.value : "";
  }

  function option(value, text) {
    var el = document.createElement("option");
    el.value = value;
    el.textContent = text;
    return el;
  }

  function fillLabUnits() {
    var hospital = chosenHospital();
    var previous = labUnit.value;
    var units = config.lab_units.filter(function (u) { return u.hospital_id === hospital; });
    labUnit.innerHTML = "";
    if (!hospital) {
      labUnit.appendChild(option("", "Select a hospital first"));
    } else if (!units.length) {
      labUnit.appendChild(option("", "No lab unit of this hospital is assigned to you"));
    } else {
      labUnit.appendChild(option("", "Select a lab unit"));
    }
    units.forEach(function (u) { labUnit.appendChild(option(u.id, u.name)); });
    if (units.length === 1) {
      labUnit.value = units[0].id;
    } else if (units.some(function (u) { return u.id === previous; })) {
      labUnit.value = previous;
    }
    labUnit.disabled = !units.length;
  }

  pills.addEventListener("change", function () {
    pills.classList.remove("invalid");
    fillLabUnits();
    labUnit.classList.remove("invalid");
  });
  fillLabUnits();

  // Once the user starts correcting the form, an old error message would only mislead.
  function clearError() {
    if (!busy) errorBox.hidden = true;
  }

  form.addEventListener("change", function (event) {
    if (event.target && event.target.classList) event.target.classList.remove("invalid");
    if (event.target && event.target.name === "mydriatic") {
      document.getElementById("mydriatic-toggle").classList.remove("invalid");
    }
    clearError();
  });

  // --- files -----------------------------------------------------------------------------

  function humanSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return Math.round(bytes / 1024) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function looksAccepted(file) {
    return ACCEPT.test(file.name) || ACCEPT_TYPES.indexOf(file.type) >= 0;
  }

  function problemOf(file) {
    if (file.size > config.max_bytes) return MESSAGES.too_large + ": will be refused";
    if (!looksAccepted(file)) return config.accept.refused + ": will be refused";
    return "";
  }

  function sameFile(a, b) {
    return a.name === b.name && a.size === b.size && a.lastModified === b.lastModified;
  }

  function addFiles(chosen) {
    Array.prototype.forEach.call(chosen, function (file) {
      if (!files.some(function (f) { return sameFile(f, file); })) files.push(file);
    });
    dropzone.classList.remove("invalid");
    clearError();
    render();
  }

  function render() {
    list.innerHTML = "";
    var total = 0;
    files.forEach(function (file, index) {
      total += file.size;
      var row = document.createElement("tr");
      var name = document.createElement("td");
      name.className = "filename";
      name.textContent = file.name;
      var size = document.createElement("td");
      size.className = "num";
      size.textContent = humanSize(file.size);
      var check = document.createElement("td");
      var problem = problemOf(file);
      check.className = problem ? "file-warning" : "file-ok";
      check.textContent = problem || "Ready";
      var remove = document.createElement("td");
      remove.className = "actions-cell";
      var removeButton = document.createElement("button");
      removeButton.type = "button";
      removeButton.className = "remove-file";
      removeButton.setAttribute("aria-label", "Remove " + file.name);
      removeButton.title = "Remove from the list";
      removeButton.textContent = "\u00d7";
      removeButton.disabled = busy;
      removeButton.addEventListener("click", function () {
        files.splice(index, 1);
        render();
      });
      remove.appendChild(removeButton);
      row.appendChild(name);
      row.appendChild(size);
      row.appendChild(check);
      row.appendChild(remove);
      list.appendChild(row);
    });
    listWrap.hidden = files.length === 0;
    summary.textContent = files.length + (files.length === 1 ? " file" : " files") +
      " chosen \u00b7 " + humanSize(total);

    var messages = [];
    if (files.length > config.max_files) {
      messages.push("At most " + config.max_files + " " + NOUN + " can be sent in one upload: remove " +
        (files.length - config.max_files) + " or upload them in a second batch.");
    }
    if (files.length > config.remaining) {
      messages.push("Your remaining quota is " + config.remaining + " " + NOUN + ": files beyond it " +
        "will be refused with \u201c" + MESSAGES.quota_exceeded + "\u201d. Ask your administrator for more.");
    }
    notes.innerHTML = "";
    messages.forEach(function (text) {
      var p = document.createElement("p");
      p.textContent = text;
      notes.appendChild(p);
    });
    notes.hidden = messages.length === 0;
  }

  fileInput.addEventListener("change", function () {
    addFiles(fileInput.files);
    fileInput.value = ""; // so choosing the same file again, after removing it, works
  });

  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      dropzone.classList.add("dragover");
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    dropzone.addEventListener(type, function () { dropzone.classList.remove("dragover"); });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropzone.classList.remove("dragover");
    if (busy) return;
    if (event.dataTransfer && event.dataTransfer.files) addFiles(event.dataTransfer.files);
  });
  // A file dropped next to the drop area must not make the browser open it and leave the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  document.getElementById("clear-files").addEventListener("click", function () {
    if (busy) return;
    files = [];
    render();
  });

  // --- quota (fresh on every show: the page may come back from the browser's cache) --------

  function refreshQuota() {
    fetch("/api/me", { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (me) {
        if (!me) return;
        var remaining = Math.max(0, me.upload_quota_effective - me.file_upload_count);
        config.remaining = remaining;
        document.getElementById("quota-number").textContent = remaining;
        document.getElementById("quota-total").textContent = me.upload_quota_effective;
        document.getElementById("quota-remaining").classList.toggle("low", remaining === 0);
        showQuota();
        render();
      })
      .catch(function () { /* the server-rendered number stays */ });
  }
  window.addEventListener("pageshow", refreshQuota);

  // At zero quota nothing can be uploaded: say so at once, not after sending the files.
  function showQuota() {
    var none = config.remaining <= 0;
    button.disabled = none || busy;
    if (none) showError(MESSAGES.quota_exceeded + ": please contact your administrator to " +
      "increase your quota.");
  }

  // --- sending ---------------------------------------------------------------------------

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    errorBox.scrollIntoView({ block: "center" });
  }

  function valueOf(name) {
    if (name === "hospital" || name === "mydriatic") {
      var checked = form.querySelector('input[name="' + name + '"]:checked');
      return checked ? checked.value : "";
    }
    return form.elements[name].value;
  }

  function markMissing(name) {
    if (name === "hospital") pills.classList.add("invalid");
    else if (name === "mydriatic") document.getElementById("mydriatic-toggle").classList.add("invalid");
    else form.elements[name].classList.add("invalid");
  }

  function setBusy(value) {
    busy = value;
    button.disabled = value;
    button.textContent = value ? "Uploading\u2026" : BUTTON_TEXT;
    progress.hidden = !value;
    render();
  }

  function onLeave(event) {
    event.preventDefault();
    event.returnValue = "";
  }

  function detailOf(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (typeof body.detail === "string") return body.detail;
    } catch (ignored) { /* not JSON */ }
    return "";
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) return;
    errorBox.hidden = true;
    var values = {};
    var missing = FIELDS.filter(function (name) {
      values[name] = valueOf(name);
      return !values[name];
    });
    if (missing.length) {
      missing.forEach(markMissing);
      showError(MESSAGES.all_fields_required);
      return;
    }
    if (config.remaining <= 0) {
      showQuota();
      return;
    }
    if (!files.length) {
      dropzone.classList.add("invalid");
      showError(MESSAGES.no_file);
      return;
    }
    if (files.length > config.max_files) {
      showError(MESSAGES.too_many_files);
      return;
    }

    setBusy(true); // at once: a second click must not send the files twice
    progressBar.style.width = "0%";
    progressText.textContent = "Preparing\u2026";
    fetchToken().then(function (token) { send(values, token); }, function () {
      setBusy(false);
      showSignedOut();
    });
  });

  // The session's token now: the page may be old, and the user may have signed in again
  // in another tab since it was opened.
  function fetchToken() {
    return fetch("/session/csrf", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) throw new Error("signed out");
        return response.ok ? response.json().then(function (b) { return b.csrf_token; }) : window.IU.csrfToken();
      }, function () { return window.IU.csrfToken(); });
  }

  function showSignedOut() {
    errorBox.textContent = "Your session has ended. ";
    var link = document.createElement("a");
    link.href = "/login";
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = "Sign in again in a new tab";
    errorBox.appendChild(link);
    errorBox.appendChild(document.createTextNode(
      ", then come back here and click \u201c" + BUTTON_TEXT + "\u201d again: your files are still selected."));
    errorBox.hidden = false;
    errorBox.scrollIntoView({ block: "center" });
  }

  function send(values, token) {
    var data = new FormData();
    FIELDS.forEach(function (name) { data.append(name, values[name]); }); // fields first
    files.forEach(function (file) { data.append("files", file, file.name); });

    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action"));
    xhr.setRequestHeader("X-CSRF-Token", token);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.round(100 * e.loaded / e.total);
      progressBar.style.width = percent + "%";
      progressText.textContent = percent < 100 ? "Sending files\u2026 " + percent + "%" : "Checking files\u2026";
    });
    xhr.addEventListener("load", function () {
      window.removeEventListener("beforeunload", onLeave);
      if (xhr.status === 201) {
        var body = JSON.parse(xhr.responseText);
        progressText.textContent = "Upload received. Opening the processing page\u2026";
        window.location.assign(body.processing_url);
        return;
      }
      setBusy(false);
      var detail = detailOf(xhr);
      if (xhr.status === 401) {
        showSignedOut();
      } else {
        showError(detail || ("The upload failed (error " + xhr.status + "). Your files are still selected; please try again."));
      }
      if (detail === ALL_FIELDS_REQUIRED) FIELDS.forEach(function (n) { if (!values[n]) markMissing(n); });
      refreshQuota();
    });
    xhr.addEventListener("error", function () {
      window.removeEventListener("beforeunload", onLeave);
      setBusy(false);
      showError("The upload could not reach the server. Please check the network connection and " +
        "try again; your files are still selected.");
    });
    window.addEventListener("beforeunload", onLeave);
    progressText.textContent = "Sending files\u2026";
    xhr.send(data);
  }

  render();
})();
