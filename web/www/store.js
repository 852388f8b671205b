// The conversations kept in this browser (IndexedDB `tern-chat`, store `conversations`), so a
// reload finds them again: {id, title, system, messages: [{role, content}], updated}. Which one
// was open is kept in localStorage. Without IndexedDB (some private modes) nothing is kept and
// every call resolves quietly: the page works as before, only forgetting on reload.

const DB_NAME = "tern-chat";
const STORE = "conversations";
const CURRENT = "tern-chat-current";

let opened = null;

function database() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

/** Runs `body(store)` in a transaction; resolves to the last request's result (null on failure). */
async function withStore(mode, body) {
  try {
    const db = await database();
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = body(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
    });
  } catch (error) {
    console.warn(`conversations not kept: ${error}`);
    return null;
  }
}

/** The saved conversations, the most recently changed first. */
export async function listConversations() {
  const all = (await withStore("readonly", (store) => store.getAll())) ?? [];
  return all.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(conversation) {
  return withStore("readwrite", (store) => store.put({ ...conversation, updated: Date.now() }));
}

export function deleteConversation(id) {
  return withStore("readwrite", (store) => store.delete(id));
}

/** The id of the conversation open in the page ("" for a new, unsaved one). */
export function currentConversation() {
  try {
    return localStorage.getItem(CURRENT) ?? "";
  } catch {
    return "";
  }
}

export function setCurrentConversation(id) {
  try {
    localStorage.setItem(CURRENT, id);
  } catch {
    // Not kept: the page opens a new conversation after a reload.
  }
}
