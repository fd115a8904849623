// The storefront: a plain client of the JSON API (same origin, cookie session, CSRF header).
"use strict";

const state = { csrf: null, user: null, products: [], cart: new Map() };
const $ = (selector) => document.querySelector(selector);
const money = (cents) => (cents / 100).toFixed(2);

function say(text, isError = false) {
  const el = $("#message");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: "application/json", ...extraHeaders };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.csrf && method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && data.detail;
    throw new Error(typeof detail === "string" ? detail : `request failed (${response.status})`);
  }
  return data;
}

function formData(form) { return Object.fromEntries(new FormData(form).entries()); }

async function loadSession() {
  try {
    const session = await api("GET", "/api/session");
    state.user = session.user;
    state.csrf = session.csrf_token;
  } catch {
    state.user = null;
    state.csrf = null;
  }
  render();
  if (state.user) await Promise.all([loadAccounts(), loadOrders()]);
}

async function loadProducts() {
  state.products = await api("GET", "/api/products");
  const body = $("#products");
  body.replaceChildren(...state.products.map((p) => {
    const row = document.createElement("tr");
    row.dataset.sku = p.sku;
    for (const value of [p.name, money(p.price), String(p.stock)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    const cell = document.createElement("td");
    const button = document.createElement("button");
    button.textContent = "Add to cart";
    button.disabled = p.stock === 0;
    button.addEventListener("click", () => addToCart(p));
    cell.append(button);
    row.append(cell);
    return row;
  }));
}

function addToCart(product) {
  state.cart.set(product.id, (state.cart.get(product.id) || 0) + 1);
  renderCart();
}

function renderCart() {
  let total = 0;
  $("#cart").replaceChildren(...[...state.cart].map(([id, quantity]) => {
    const product = state.products.find((p) => p.id === id);
    total += product.price * quantity;
    const item = document.createElement("li");
    item.textContent = `${quantity} × ${product.name}`;
    return item;
  }));
  $("#cart-total").textContent = money(total);
}

async function loadAccounts() {
  const accounts = await api("GET", "/api/accounts");
  $("#accounts").replaceChildren(...accounts.map((a) => {
    const item = document.createElement("li");
    item.textContent = `Account ${a.id}: ${money(a.balance)}`;
    item.dataset.accountId = a.id;
    return item;
  }));
  $("#account-select").replaceChildren(...accounts.map((a) => new Option(`Account ${a.id}`, a.id)));
}

async function loadOrders() {
  const orders = await api("GET", "/api/orders");
  $("#orders").replaceChildren(...orders.map((o) => {
    const item = document.createElement("li");
    item.textContent = `Order ${o.id}: ${o.status}, ${money(o.total)}`;
    return item;
  }));
}

function render() {
  $("#whoami").textContent = state.user ? `${state.user.name} <${state.user.email}>` : "not logged in";
  $("#logout").hidden = !state.user;
  $("#auth").hidden = Boolean(state.user);
  $("#shop").hidden = !state.user;
}

function handle(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try { await action(formData(form)); } catch (error) { say(error.message, true); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  handle($("#login-form"), async ({ email, password }) => {
    const session = await api("POST", "/api/session", { email, password });
    state.user = session.user;
    state.csrf = session.csrf_token;
    say(`Welcome, ${session.user.name}.`);
    await loadSession();
  });
  handle($("#signup-form"), async ({ name, email, password }) => {
    await api("POST", "/api/users", { name, email, password });
    say("Account created: you can log in now.");
  });
  handle($("#checkout-form"), async ({ method, card_number, account_id }) => {
    const items = [...state.cart].map(([product_id, quantity]) => ({ product_id, quantity }));
    if (items.length === 0) throw new Error("The cart is empty.");
    const payment = method === "card"
      ? { method, card_number }
      : { method, account_id: Number(account_id) };
    const key = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
    const order = await api("POST", "/api/orders", { items, payment }, { "Idempotency-Key": key });
    state.cart.clear();
    renderCart();
    say(`Order ${order.id} is ${order.status}.`);
    await Promise.all([loadProducts(), loadAccounts(), loadOrders()]);
  });
  handle($("#deposit-form"), async ({ amount, card_number }) => {
    const account = $("#account-select").value;
    await api("POST", `/api/accounts/${account}/deposits`, { amount: Number(amount), card_number });
    say("Deposit received.");
    await loadAccounts();
  });
  $("#logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/session"); } catch (error) { say(error.message, true); }
    state.user = null;
    state.csrf = null;
    say("Logged out.");
    render();
  });
  loadProducts().catch((error) => say(error.message, true));
  loadSession();
});
