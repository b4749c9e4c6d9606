// The live page's one script: apply the server's feed (each changed call's card, or its new
// transcript lines, already rendered), keep the durations ticking, and reload when told to.
"use strict";
(function () {
  const status = document.getElementById("feed-status");
  const calls = document.getElementById("calls");
  const none = document.getElementById("no-calls");
  const count = document.getElementById("live-count");
  const feed = new EventSource(status.dataset.url);

  function fresh(html) {
    const holder = document.createElement("div");
    holder.innerHTML = html;
    return holder.firstElementChild;
  }
  feed.addEventListener("open", function () { status.textContent = "Live: updates as calls happen."; });
  feed.addEventListener("error", function () { status.textContent = "Live feed lost: reconnecting…"; });
  feed.addEventListener("call", function (event) {
    const data = JSON.parse(event.data);
    const card = fresh(data.html);
    const old = document.getElementById("call-" + data.id);
    if (old) {
      const list = old.querySelector("ol.transcript");
      const scrolled = list && list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
      old.replaceWith(card);
      const now = card.querySelector("ol.transcript");
      if (now && (scrolled || !list)) { now.scrollTop = now.scrollHeight; }
    } else {
      calls.prepend(card);
    }
    none.hidden = true;
  });
  feed.addEventListener("line", function (event) {
    const data = JSON.parse(event.data);
    const list = document.querySelector("#call-" + CSS.escape(data.id) + " ol.transcript");
    if (!list) { return; }
    const scrolled = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.insertAdjacentHTML("beforeend", data.html);
    if (scrolled) { list.scrollTop = list.scrollHeight; }
  });
  feed.addEventListener("tick", function (event) {
    const data = JSON.parse(event.data);
    count.textContent = data.live;
    for (const card of calls.querySelectorAll("article.call:not([data-ended])")) {
      const state = data.states[card.dataset.call];
      if (state) {
        card.querySelector("[data-state]").textContent = state;
        card.className = "call state-" + state;
      }
    }
  });
  feed.addEventListener("reload", function () { feed.close(); window.location.reload(); });
  setInterval(function () {
    for (const card of calls.querySelectorAll("article.call:not([data-ended])")) {
      const seconds = Math.max(0, Math.floor((Date.now() - Number(card.dataset.started)) / 1000));
      card.querySelector("[data-duration]").textContent =
        Math.floor(seconds / 60) + ":" + String(seconds % 60).padStart(2, "0");
    }
  }, 1000);
})();
